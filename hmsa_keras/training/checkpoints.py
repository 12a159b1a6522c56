"""Fault-tolerant state: resumable checkpoints and atomically written ``.keras`` models.

- ``checkpoints/`` holds ``tf.train.Checkpoint`` snapshots (model, optimizer slots,
  step, epoch, best mIoU). TensorFlow writes the data files first and then replaces
  the small ``checkpoint`` index file atomically, so a run killed mid-save restarts
  from the previous complete snapshot.
- ``best.keras`` / ``last.keras`` are written to a temporary file in the same folder
  and moved into place with ``os.replace`` (atomic on POSIX).
- Under multi-worker every worker must take part in a save; only the chief writes
  into ``model_dir``, the others into a private temporary folder. On a restart every worker
  restores the chief's newest snapshot from ``model_dir/checkpoints`` (so all workers must see
  the chief's ``model_dir``: a shared file system), and the workers check that they restored
  the same step before training on (a worker that found no checkpoint would otherwise train
  from other weights and run more steps than the others).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf


class RunState:
    """The checkpointed training state beyond weights and optimizer slots."""

    def __init__(self):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_miou = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_miou")


class CheckpointKeeper:
    """Wraps a ``tf.train.CheckpointManager`` with chief / non-chief handling."""

    def __init__(
        self, model_dir, model, optimizer, state: RunState, chief=True, max_to_keep=3, strategy=None
    ):
        self.chief = chief
        self.strategy = strategy
        self.state = state
        self.directory = os.path.join(model_dir, "checkpoints")
        write_dir = self.directory if chief else tempfile.mkdtemp(prefix="hmsa_worker_ckpt_")
        # The loss trackers' running sums too, so that a run resumed mid-epoch reports the
        # same epoch means as an uninterrupted one (older checkpoints without them still load).
        tracker_vars = [
            v.value for t in getattr(model, "loss_trackers", {}).values() for v in t.variables
        ]
        trackers = tf.train.Checkpoint(**{f"v{i}": v for i, v in enumerate(tracker_vars)})
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            step=state.step,
            epoch=state.epoch,
            best_miou=state.best_miou,
            trackers=trackers,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, write_dir, max_to_keep=max_to_keep
        )
        self._write_dir = write_dir

    def restore_latest(self):
        """Restores the chief's newest checkpoint; returns its path or None for a fresh run.

        With a multi-worker ``strategy``, raises ``MultiWorkerFault`` when the workers restored
        different steps (:func:`hmsa_keras.training.distribute.check_workers_agree`)."""
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            self.checkpoint.restore(latest).expect_partial()
        if self.strategy is not None:
            from hmsa_keras.training.distribute import check_workers_agree

            source = latest or "no checkpoint"
            check_workers_agree(
                self.strategy,
                int(self.state.step.numpy()),
                f"restored training step (from {source})",
                hint=f"every worker must read the chief's checkpoints in {self.directory} (give "
                "all workers the same --model_dir on a shared file system)",
            )
        return latest

    def save(self, step):
        if self.strategy is not None:
            from hmsa_keras.training.distribute import guard_collectives

            save = guard_collectives(
                self._save,
                self.strategy,
                lambda: f"the checkpoint of step {step}",
                lambda: tf.train.latest_checkpoint(self.directory),
            )
            return save(step)
        return self._save(step)

    def _save(self, step):
        path = self.manager.save(checkpoint_number=int(step))
        if not self.chief:  # the non-chief copy only exists to take part in collectives
            shutil.rmtree(self._write_dir, ignore_errors=True)
            os.makedirs(self._write_dir, exist_ok=True)
        return path


def save_keras_atomic(model, path, chief=True):
    """Saves ``model`` as ``.keras`` via a temporary file + ``os.replace``."""
    folder = (
        os.path.dirname(os.path.abspath(path)) if chief else tempfile.mkdtemp(prefix="hmsa_worker_")
    )
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        if chief:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        if not chief:
            shutil.rmtree(folder, ignore_errors=True)
