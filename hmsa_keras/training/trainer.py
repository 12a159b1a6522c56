"""``train()``: configs in, a training directory out.

model_dir/
  config.json      the run's resolved configs (training/run_config.py; read by the other tools)
  checkpoints/     resumable tf.train checkpoints (model, optimizer, step, epoch, best mIoU)
  best.keras       best model by validation mIoU;  last.keras: the final model
  logs/train, logs/val   TensorBoard
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
    from hmsa_keras.training.distribute import is_chief, make_strategy

    if strategy is None:
        strategy = make_strategy(train_cfg.strategy, train_cfg.num_cpu_replicas)

    import keras
    import tensorflow as tf

    from hmsa_keras import api, metrics as metrics_lib
    from hmsa_keras.data import build_dataset, get_dataset_info
    from hmsa_keras.training.checkpoints import CheckpointKeeper, RunState, save_keras_atomic
    from hmsa_keras.training.loop import evaluate, make_test_function, make_train_function
    from hmsa_keras.training.optimizer import build_optimizer
    from hmsa_keras.training.run_config import check_resume, num_examples, resolve
    from hmsa_keras.training.summaries import Summaries

    keras.mixed_precision.set_global_policy(train_cfg.precision)
    keras.utils.set_random_seed(data_cfg.seed)
    chief = is_chief(strategy)
    model_dir = train_cfg.model_dir
    os.makedirs(model_dir, exist_ok=True)

    info = get_dataset_info(data_cfg)
    run = resolve(model_cfg, data_cfg, train_cfg, strategy.num_replicas_in_sync, info.num_classes,
                  num_examples(data_cfg, data_cfg.train_split))
    model_cfg, resolved = run.model, run.resolved  # from here on nothing changes the configs
    if chief:
        check_resume(run, model_dir)
        run.write(model_dir)
    batch, steps_per_epoch, total_steps = resolved.global_batch_size, resolved.steps_per_epoch, resolved.total_steps
    learning_rate = resolved.learning_rate

    with strategy.scope():
        model = api.build_model(model_cfg)
        if train_cfg.freeze:
            model.set_frozen(train_cfg.freeze)
        optimizer = build_optimizer(model, learning_rate, total_steps, train_cfg.momentum,
                                    train_cfg.weight_decay, train_cfg.lr_power, train_cfg.warmup_steps,
                                    weight_decay_mode=train_cfg.weight_decay_mode,
                                    lr_schedule_granularity=train_cfg.lr_schedule_granularity,
                                    steps_per_epoch=steps_per_epoch)
        if train_cfg.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=train_cfg.loss, aux_weight=train_cfg.aux_weight,
                      scale_loss_weight=train_cfg.scale_loss_weight, class_weights=train_cfg.class_weights)
        optimizer.build(model.trainable_variables)
        state = RunState()
    keeper = CheckpointKeeper(model_dir, model, optimizer, state, chief=chief)
    resumed = keeper.restore_latest()
    start_step = int(state.step.numpy())
    if resumed:
        _log(f"Resuming from {resumed}: epoch {int(state.epoch.numpy()) + 1}, step {start_step}/{total_steps}")
    else:
        _log(f"Starting a new run in {model_dir}: {train_cfg.epochs} epoch(s) x {steps_per_epoch} steps, "
             f"global batch {batch} on {strategy.num_replicas_in_sync} replica(s), LR {learning_rate:g}, "
             f"{train_cfg.precision}")

    train_ds = build_dataset(data_cfg, data_cfg.train_split, training=True, batch_size=batch)
    train_ds = train_ds.skip(start_step)  # replay the data position of the resumed step
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    val_ds = build_dataset(data_cfg, data_cfg.val_split, training=False,
                           batch_size=strategy.num_replicas_in_sync)
    dist_val_ds = strategy.experimental_distribute_dataset(val_ds)
    preview = next(iter(val_ds))

    summaries = Summaries(model_dir, info, enabled=chief)
    train_fn = make_train_function(model, strategy)
    test_fn = make_test_function(model, strategy)  # traced once, reused by every validation
    history_path = os.path.join(model_dir, "history.json")
    history = json.load(open(history_path)) if resumed and os.path.exists(history_path) else []
    result, logs = {}, {}
    step = start_step
    for epoch in range(int(state.epoch.numpy()), train_cfg.epochs):
        first = step - epoch * steps_per_epoch
        if first == 0:  # resumed mid-epoch: keep the restored running means of this epoch
            for tracker in model.loss_trackers.values():
                tracker.reset_state()
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=list(model.loss_trackers),
                                  verbose=1 if chief else 0)
        tic = time.time()
        for _ in range(first, steps_per_epoch):
            logs = {k: float(v) for k, v in train_fn(iterator).items()}
            step += 1
            if not all(math.isfinite(v) for v in logs.values()):
                raise TrainingDiverged(
                    f"Loss became {logs['loss']} at step {step} (epoch {epoch + 1}); stopped without "
                    f"saving. The last good checkpoint is {tf.train.latest_checkpoint(keeper.directory)}. "
                    "Lower --learning_rate, add --warmup_steps, or check the data.")
            bar.update(step - epoch * steps_per_epoch, list(logs.items()))
            if step % 10 == 0 or step == total_steps:
                lr = float(optimizer.learning_rate)
                rate = (step - epoch * steps_per_epoch - first) / max(time.time() - tic, 1e-9)
                summaries.scalars("train", {**logs, "learning_rate": lr, "steps_per_second": rate}, step)
            if train_cfg.image_every and step % train_cfg.image_every == 0:
                summaries.images(model, *preview, step)
            if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0:
                state.step.assign(step)
                keeper.save(step)
        state.step.assign(step)
        state.epoch.assign(epoch + 1)
        result = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in logs.items()}}
        if (epoch + 1) % train_cfg.val_every == 0 or epoch + 1 == train_cfg.epochs:
            val_logs, cm = evaluate(model, strategy, dist_val_ds, test_fn)
            val_metrics = metrics_lib.compute_metrics(np.asarray(cm), info.class_names)
            summaries.validation(val_logs, val_metrics, step)
            result.update({f"val_{k}": v for k, v in val_logs.items()},
                          val_pixel_accuracy=val_metrics["pixel_accuracy"])
            if val_metrics["miou"] > float(state.best_miou.numpy()):
                state.best_miou.assign(val_metrics["miou"])
                save_keras_atomic(model, os.path.join(model_dir, api.BEST_MODEL), chief)
        summaries.images(model, *preview, step)
        keeper.save(step)
        history.append(result)
        if chief:
            with open(history_path, "w") as f:
                json.dump(history, f, indent=1)
        _log(f"Epoch {epoch + 1}/{train_cfg.epochs}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float)) +
            f" ({time.time() - tic:.1f}s)")
    save_keras_atomic(model, os.path.join(model_dir, api.LAST_MODEL), chief)
    result["best_val_miou"] = float(state.best_miou.numpy())
    return result
