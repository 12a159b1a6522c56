"""Fault-tolerant state: resumable checkpoints and atomically written ``.keras`` models.

- ``checkpoints/`` holds ``tf.train.Checkpoint`` snapshots (model, optimizer slots,
  step, epoch, best mIoU). TensorFlow writes the data files first and then replaces
  the small ``checkpoint`` index file atomically, so a run killed mid-save restarts
  from the previous complete snapshot.
- ``best.keras`` / ``last.keras`` are written to a temporary file in the same folder
  and moved into place with ``os.replace`` (atomic on POSIX).
- Under multi-worker every worker must take part in a save; only the chief writes
  into ``model_dir``, the others into a private temporary folder.
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

    def __init__(self, model_dir, model, optimizer, state: RunState, chief=True, max_to_keep=3):
        self.chief = chief
        self.directory = os.path.join(model_dir, "checkpoints")
        write_dir = self.directory if chief else tempfile.mkdtemp(prefix="hmsa_worker_ckpt_")
        # The loss trackers' running sums too, so that a run resumed mid-epoch reports the
        # same epoch means as an uninterrupted one (older checkpoints without them still load).
        tracker_vars = [v.value for t in getattr(model, "loss_trackers", {}).values() for v in t.variables]
        trackers = tf.train.Checkpoint(**{f"v{i}": v for i, v in enumerate(tracker_vars)})
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=state.step,
                                              epoch=state.epoch, best_miou=state.best_miou,
                                              trackers=trackers)
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=max_to_keep)
        self._write_dir = write_dir

    def restore_latest(self):
        """Restores the chief's newest checkpoint; returns its path or None for a fresh run."""
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            self.checkpoint.restore(latest).expect_partial()
        return latest

    def save(self, step):
        path = self.manager.save(checkpoint_number=int(step))
        if not self.chief:  # the non-chief copy only exists to take part in collectives
            shutil.rmtree(self._write_dir, ignore_errors=True)
            os.makedirs(self._write_dir, exist_ok=True)
        return path


def save_keras_atomic(model, path, chief=True):
    """Saves ``model`` as ``.keras`` via a temporary file + ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path)) if chief else tempfile.mkdtemp(prefix="hmsa_worker_")
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
