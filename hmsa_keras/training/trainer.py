"""``train()``: configs in, a training directory out.

model_dir/
  config.json      the run's resolved configs (training/run_config.py; read by the other tools)
  checkpoints/     resumable tf.train checkpoints (model, optimizer, step, epoch, best mIoU)
  best.keras       best model by validation mIoU;  last.keras: the final model
  best_metrics.json  per-class metrics of the best validation (printed at the end)
  warm_start.json  what --init_from loaded (runs started with it)
  logs/train, logs/val   TensorBoard (training/summaries.py)
  history.json     one record per epoch
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from hmsa_keras.config import DataConfig, ModelConfig, TrainConfig


class TrainingDiverged(RuntimeError):
    """Raised when the loss is NaN or infinite; the last good checkpoint is left untouched."""


def _log(message):
    print(message, flush=True)


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, strategy=None):
    """Trains (or resumes) a run; returns a dict with the final validation metrics.

    The strategy must be made before any other TensorFlow work (see
    :func:`hmsa_keras.training.distribute.make_strategy`); it is made from
    ``train_cfg`` when not given.
    """
    from hmsa_keras.training.distribute import guard_collectives, is_chief, make_strategy

    if strategy is None:
        strategy = make_strategy(train_cfg.strategy, train_cfg.num_cpu_replicas)

    import keras
    import tensorflow as tf

    from hmsa_keras import api
    from hmsa_keras import metrics as metrics_lib
    from hmsa_keras.data import build_dataset, get_dataset_info
    from hmsa_keras.training.checkpoints import CheckpointKeeper, RunState, save_keras_atomic
    from hmsa_keras.training.loop import make_test_function, make_train_function
    from hmsa_keras.training.optimizer import build_optimizer
    from hmsa_keras.training.progress import progress
    from hmsa_keras.training.run_config import check_resume, num_examples, resolve
    from hmsa_keras.training.summaries import Summaries, ValidationWatcher

    keras.mixed_precision.set_global_policy(train_cfg.precision)
    keras.utils.set_random_seed(data_cfg.seed)
    chief = is_chief(strategy)
    model_dir = train_cfg.model_dir
    os.makedirs(model_dir, exist_ok=True)

    info = get_dataset_info(data_cfg)
    run = resolve(
        model_cfg,
        data_cfg,
        train_cfg,
        strategy.num_replicas_in_sync,
        info.num_classes,
        num_examples(data_cfg, data_cfg.train_split),
    )
    model_cfg, resolved = run.model, run.resolved  # from here on nothing changes the configs
    if chief:
        check_resume(run, model_dir)
        run.write(model_dir)
    batch, steps_per_epoch = resolved.global_batch_size, resolved.steps_per_epoch
    total_steps = resolved.total_steps
    learning_rate = resolved.learning_rate

    with strategy.scope():
        model = api.build_model(model_cfg)
        if train_cfg.freeze:
            model.set_frozen(train_cfg.freeze)
        optimizer = build_optimizer(
            model,
            learning_rate,
            total_steps,
            train_cfg.momentum,
            train_cfg.weight_decay,
            train_cfg.lr_power,
            train_cfg.warmup_steps,
            weight_decay_mode=train_cfg.weight_decay_mode,
            lr_schedule_granularity=train_cfg.lr_schedule_granularity,
            steps_per_epoch=steps_per_epoch,
        )
        if train_cfg.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=train_cfg.loss,
            aux_weight=train_cfg.aux_weight,
            scale_loss_weight=train_cfg.scale_loss_weight,
            class_weights=train_cfg.class_weights,
        )
        optimizer.build(model.trainable_variables)
        state = RunState()
    keeper = CheckpointKeeper(model_dir, model, optimizer, state, chief=chief, strategy=strategy)
    resumed = keeper.restore_latest()
    start_step = int(state.step.numpy())
    if resumed:
        _log(
            f"Resuming from {resumed}: epoch {int(state.epoch.numpy()) + 1}, "
            f"step {start_step}/{total_steps}"
        )
        if train_cfg.init_from:  # the checkpoint holds this run's own weights: never overwrite them
            _log(
                f"(--init_from={train_cfg.init_from} is not applied again: the run continues "
                "from its checkpoint)"
            )
    else:
        _log(
            f"Starting a new run in {model_dir}: {train_cfg.epochs} epoch(s) x {steps_per_epoch} "
            f"steps, global batch {batch} on {strategy.num_replicas_in_sync} replica(s), "
            f"LR {learning_rate:g}, {train_cfg.precision}"
        )
        if train_cfg.init_from:
            _warm_start(model, train_cfg.init_from, model_dir, chief)

    train_ds = build_dataset(data_cfg, data_cfg.train_split, training=True, batch_size=batch)
    train_ds = train_ds.skip(start_step)  # replay the data position of the resumed step
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    val_ds = _validation_dataset(build_dataset, data_cfg, strategy.num_replicas_in_sync)
    dist_val_ds = strategy.experimental_distribute_dataset(val_ds)
    preview = next(iter(val_ds))

    summaries = Summaries(model_dir, info, enabled=chief, chain=model.train_scales)
    # Per-image scores read the running confusion matrix after every validation step: a collective
    # under multi_worker, so there only the scalars and the confusion matrix are logged.
    watcher = ValidationWatcher(train_cfg.summary_images, train_cfg.worst_images)
    multi_worker = train_cfg.strategy == "multi_worker" or isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    )
    if multi_worker or not watcher.active:
        watcher = None
    last_checkpoint = lambda: tf.train.latest_checkpoint(keeper.directory)  # noqa: E731
    # Multi-worker: a lost peer ends the run with WorkerLost (naming it) instead of a hang.
    train_fn = guard_collectives(
        make_train_function(model, strategy),
        strategy,
        lambda: f"training step {step + 1} (epoch {epoch + 1})",
        last_checkpoint,
    )
    test_fn = guard_collectives(
        make_test_function(model, strategy),
        strategy,  # traced once
        lambda: f"the validation of epoch {epoch + 1}",
        last_checkpoint,
    )
    history_path = os.path.join(model_dir, "history.json")
    history = json.load(open(history_path)) if resumed and os.path.exists(history_path) else []
    result, logs = {}, {}
    step = start_step
    patience = train_cfg.early_stopping_patience
    stopped_early = bool(patience) and _stale_validations(history) >= patience
    if stopped_early:
        _log(
            f"This run already stopped early (no val mIoU improvement in {patience} validation(s))."
        )
    for epoch in range(int(state.epoch.numpy()), train_cfg.epochs):
        if stopped_early:
            break
        first = step - epoch * steps_per_epoch
        if first == 0:  # resumed mid-epoch: keep the restored running means of this epoch
            for tracker in model.loss_trackers.values():
                tracker.reset_state()
        bar = progress(
            steps_per_epoch,
            model.loss_trackers,
            verbose=chief,
            epoch=epoch + 1,
            epochs=train_cfg.epochs,
        )  # a bar on a terminal, plain lines in a log file
        tic = time.time()
        for _ in range(first, steps_per_epoch):
            logs = {k: float(v) for k, v in train_fn(iterator).items()}
            step += 1
            if not all(math.isfinite(v) for v in logs.values()):
                raise TrainingDiverged(
                    f"Loss became {logs['loss']} at step {step} (epoch {epoch + 1}); stopped "
                    "without saving. The last good checkpoint is "
                    f"{tf.train.latest_checkpoint(keeper.directory)}. "
                    "Lower --learning_rate, add --warmup_steps, or check the data."
                )
            bar.update(step - epoch * steps_per_epoch, list(logs.items()))
            if step % 10 == 0 or step == total_steps:
                lr = float(optimizer.learning_rate)
                rate = (step - epoch * steps_per_epoch - first) / max(time.time() - tic, 1e-9)
                summaries.scalars(
                    "train", {**logs, "learning_rate": lr, "steps_per_second": rate}, step
                )
            if train_cfg.image_every and step % train_cfg.image_every == 0:
                summaries.images(model, *preview, step)
            if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0:
                state.step.assign(step)
                keeper.save(step)
        state.step.assign(step)
        state.epoch.assign(epoch + 1)
        result = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in logs.items()}}
        if (epoch + 1) % train_cfg.val_every == 0 or epoch + 1 == train_cfg.epochs:
            val_logs, cm = _validate(model, strategy, dist_val_ds, test_fn, watcher)
            val_metrics = metrics_lib.compute_metrics(np.asarray(cm), info.class_names)
            summaries.validation(val_logs, val_metrics, step)
            summaries.validation_images(model, watcher, np.asarray(cm), val_metrics, step)
            result.update(
                {f"val_{k}": v for k, v in val_logs.items()},
                val_pixel_accuracy=val_metrics["pixel_accuracy"],
            )
            if val_metrics["miou"] > float(state.best_miou.numpy()):
                state.best_miou.assign(val_metrics["miou"])
                save_keras_atomic(model, os.path.join(model_dir, api.BEST_MODEL), chief)
                if chief:
                    metrics_lib.write_metrics(
                        dict(val_metrics, epoch=epoch + 1, step=step),
                        os.path.join(model_dir, BEST_METRICS),
                    )
        summaries.images(model, *preview, step)
        keeper.save(step)
        history.append(result)
        if chief:
            with open(history_path, "w") as f:
                json.dump(history, f, indent=1)
        _log(
            f"Epoch {epoch + 1}/{train_cfg.epochs}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
            + f" ({time.time() - tic:.1f}s)"
        )
        if patience and "val_miou" in result and _stale_validations(history) >= patience:
            stopped_early = True
            best = max((h for h in history if "val_miou" in h), key=lambda h: h["val_miou"])
            _log(
                f"Early stopping after epoch {epoch + 1}: val mIoU has not improved for "
                f"{patience} validation(s) (best {best['val_miou']:.4f} at epoch "
                f"{best['epoch']})."
            )
    save_keras_atomic(model, os.path.join(model_dir, api.LAST_MODEL), chief)
    result["best_val_miou"] = float(state.best_miou.numpy())
    result["stopped_early"] = stopped_early
    if chief:
        _print_best_table(model_dir)
    return result


BEST_METRICS = "best_metrics.json"


def _warm_start(model, path, model_dir, chief):
    """Applies ``--init_from`` to a new run and prints what was loaded (WarmStartError if the
    source is unusable)."""
    from hmsa_keras.training import warm_start

    report = warm_start.warm_start(model, path)
    _log(report.summary())
    if chief:
        warm_start.write_report(report, model_dir, path)
    return report


def _validate(model, strategy, dataset, test_fn, watcher=None):
    """One validation pass: the model's ``test_step`` over the (distributed) dataset. Returns
    the logs and the confusion matrix; ``watcher`` sees the running matrix after every step
    (per-image scores for TensorBoard,
    :class:`~hmsa_keras.training.summaries.ValidationWatcher`)."""
    if watcher is None:
        from hmsa_keras.training.loop import evaluate

        return evaluate(model, strategy, dataset, test_fn)
    import collections

    for metric in model.metrics:
        metric.reset_state()
    watcher.begin()
    # The matrix after each step is a snapshot tensor; it is read on the host two steps later,
    # when it is long computed, so the reads do not stall the steps (reading at once cost
    # ~13 ms per step in the quickstart's validation).
    pending = collections.deque()
    for batch in dataset:
        test_fn(batch)
        pending.append((_local_batches(strategy, batch), model.miou_metric.matrix()))
        if len(pending) > 2:
            batches, matrix = pending.popleft()
            watcher.observe(batches, matrix.numpy())
    while pending:
        batches, matrix = pending.popleft()
        watcher.observe(batches, matrix.numpy())
    watcher.end()
    logs = {m.name: float(m.result()) for m in model.metrics}
    return logs, model.miou_metric.matrix()


def _validation_dataset(build_dataset, data_cfg, replicas):
    """Validation batches of one image per replica. When the split does not divide by the
    replicas, the last batch is completed with copies of the first image whose labels are all
    the ignore label (they add nothing to the losses or the confusion matrix): a replica given
    an empty batch fails in BatchNorm."""
    import tensorflow as tf

    from hmsa_keras.conventions import IGNORE_LABEL
    from hmsa_keras.training.run_config import num_examples

    ds = build_dataset(data_cfg, data_cfg.val_split, training=False, batch_size=replicas)
    missing = -num_examples(data_cfg, data_cfg.val_split) % replicas
    if replicas == 1 or not missing:
        return ds
    singles = build_dataset(data_cfg, data_cfg.val_split, training=False, batch_size=1).unbatch()
    filler = singles.take(1).map(
        lambda image, label: (image, tf.fill(tf.shape(label), IGNORE_LABEL))
    )
    return singles.concatenate(filler.repeat(missing)).batch(replicas)


def _local_batches(strategy, batch):
    """The ``(images, labels)`` of each local replica of a (distributed) batch."""
    images, labels = batch
    return list(
        zip(
            strategy.experimental_local_results(images), strategy.experimental_local_results(labels)
        )
    )


def _stale_validations(history):
    """Validations since the best val mIoU (improvement = strictly greater, as for best.keras)."""
    scores = [h["val_miou"] for h in history if "val_miou" in h]
    if not scores:
        return 0
    return len(scores) - 1 - int(np.argmax(scores))


def _print_best_table(model_dir):
    """Prints the per-class IoU table of the best validation (``best_metrics.json``)."""
    from hmsa_keras.metrics import format_table

    path = os.path.join(model_dir, BEST_METRICS)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        best = json.load(f)
    _log(
        f"Per-class IoU of best.keras (epoch {best.get('epoch')}, step {best.get('step')}, "
        "validation at the training scales):\n" + format_table(best)
    )
