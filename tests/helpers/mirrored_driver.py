"""MirroredStrategy over 2 logical CPUs vs one device, on the same global batch.

    python mirrored_driver.py equivalence OUT.npz   # custom loop + fit, SyncBN, float32 overfit
    python mirrored_driver.py precision OUT.npz     # bf16 / fp16 / fp16 x 2 replicas + LSO skip

Writes its measurements to OUT.npz; the tests assert on them.
"""

import json
import sys
import time

from common import TINY, find_layer, setup_tf

tf = setup_tf(logical_cpus=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from hmsa_keras import build_model  # noqa: E402
from hmsa_keras.training.loop import (  # noqa: E402
    make_train_function,
    skip_if_any_replica_nonfinite,
)
from hmsa_keras.training.optimizer import build_optimizer  # noqa: E402

DEVICES = ["/cpu:0", "/cpu:1"]
_MIRRORED = []


def mirrored_strategy():
    """One MirroredStrategy per process: two instances over the same devices in one process
    can mismatch their collective instance keys ("Shape mismatch in the collective instance")."""
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(devices=DEVICES))
    return _MIRRORED[0]


def batch(size, global_batch, num_classes=4):
    """A fixed global batch whose halves (one per replica) differ in statistics and in the
    number of valid pixels."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((global_batch, size, size, 3)).astype(np.float32)
    images[global_batch // 2 :] += 1.5
    # learnable, unbalanced layout (top / bottom-left / bottom-right) with 10% noise of class 3
    yy, xx = np.mgrid[:size, :size]
    layout = np.where(yy < size // 2, 0, np.where(xx < size // 2, 1, 2))
    labels = np.broadcast_to(layout, (global_batch, size, size)).astype(np.int32)
    labels = np.where(rng.random(labels.shape) < 0.1, num_classes - 1, labels).astype(np.int32)
    second = labels[global_batch // 2 :]
    second[rng.random(second.shape) < 0.5] = 255
    return images, labels


def make(strategy, lr, precision="float32", aux_head=True, weights=None, sync_bn=True):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = build_model(num_classes=4, sync_bn=sync_bn, aux_head=aux_head, **TINY)
        optimizer = build_optimizer(model, lr, total_steps=100, weight_decay=1e-4)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
    if weights is not None:
        model.set_weights(weights)
    return model


def steps(model, strategy, dataset, n):
    """n custom-loop steps; the loss of each step (trackers reset before every step)."""
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    train = make_train_function(model, strategy)
    out = []
    for _ in range(n):
        for t in model.loss_trackers.values():
            t.reset_state()
        out.append({k: float(v) for k, v in train(iterator).items()})
    return out


def equivalence(out_path):
    images, labels = batch(64, 4)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    mirrored = mirrored_strategy()
    single = tf.distribute.get_strategy()
    result, timings = {}, {}

    t = time.time()
    model = make(single, 0.05)
    w0 = model.get_weights()
    names = [v.path for v in model.weights]
    # Expected BN statistics of the first trunk BN after one step: the layer sees the 0.5x
    # batch, then the 1.0x batch (momentum 0.9, moving mean starts at 0).
    adapter, conv1 = find_layer(model.network, "input_adapter"), find_layer(model.network, "Conv1")

    def channel_mean(x):
        return np.mean(conv1(adapter(x)).numpy(), axis=(0, 1, 2))

    half = tf.image.resize(images, (32, 32))
    m05, m10 = channel_mean(half), channel_mean(images)
    result["bn_expected_global"] = 0.9 * (0.1 * m05) + 0.1 * m10
    r05, r10 = channel_mean(half[:2]), channel_mean(images[:2])
    result["bn_expected_replica0_only"] = 0.9 * (0.1 * r05) + 0.1 * r10
    logs = steps(model, single, ds, 1)
    w_single = model.get_weights()
    logs += steps(model, single, ds, 4)  # float32 overfit: the same batch again
    result["float32_losses"] = np.array([l["loss"] for l in logs])
    result["single_logs"] = json.dumps(logs[0])
    timings["single"] = time.time() - t

    t = time.time()
    model = make(mirrored, 0.05, weights=w0)
    mlogs = steps(model, mirrored, ds, 1)
    w_mloop = model.get_weights()
    result["mirrored_logs"] = json.dumps(mlogs[0])
    result["bn_mirrored_replicas"] = np.stack(
        [
            v.numpy()
            for v in mirrored.experimental_local_results(
                find_layer(model.network, "bn_Conv1").moving_mean.value
            )
        ]
    )
    timings["mirrored_loop"] = time.time() - t

    t = time.time()
    model = make(mirrored, 0.05, weights=w0)
    history = model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0).history
    w_mfit = model.get_weights()
    result["fit_logs"] = json.dumps({k: float(v[-1]) for k, v in history.items()})
    timings["mirrored_fit"] = time.time() - t

    result["names"] = np.array(names)
    for tag, ws in (("w0", w0), ("w_single", w_single), ("w_mloop", w_mloop), ("w_mfit", w_mfit)):
        for name, w in zip(names, ws):
            result[f"{tag}:{name}"] = w
    result["timings"] = json.dumps(timings)
    np.savez(out_path, **result)


def lso_skip(result):
    """skip_if_any_replica_nonfinite: a non-finite gradient on replica 1 only must make the
    LossScaleOptimizer skip the step on every replica, so the mirrored variables stay equal
    (hmsa_keras/training/loop.py: skip_if_any_replica_nonfinite; docs/training.md)."""
    keras.mixed_precision.set_global_policy("float32")
    strategy = mirrored_strategy()
    with strategy.scope():
        w = keras.Variable(np.ones((3,), np.float32), name="w")
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=8.0)
        opt.build([w])

    @tf.function
    def step(poison_replica):
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w.value * 2.0)
                scaled = opt.scale_loss(loss)
            grads = tape.gradient(scaled, [w.value])
            bad = tf.cast(ctx.replica_id_in_sync_group == poison_replica, tf.float32)
            grads = [grads[0] + tf.where(bad > 0, float("inf"), 0.0)]
            grads = skip_if_any_replica_nonfinite(grads, opt)
            opt.apply_gradients(zip(grads, [w]))
            return grads[0]

        return strategy.run(replica_fn)

    before = np.stack([v.numpy() for v in strategy.experimental_local_results(w.value)])
    grads = step(tf.constant(1))
    after = np.stack([v.numpy() for v in strategy.experimental_local_results(w.value)])
    result["lso_poisoned_grads"] = np.stack(
        [g.numpy() for g in strategy.experimental_local_results(grads)]
    )
    result["lso_before"], result["lso_after_bad"] = before, after
    result["lso_scale_after_bad"] = float(opt.dynamic_scale.numpy())
    step(tf.constant(-1))  # no replica poisoned: a normal step everywhere
    result["lso_after_good"] = np.stack(
        [v.numpy() for v in strategy.experimental_local_results(w.value)]
    )


def precision(out_path):
    result, timings = {}, {}
    lso_skip(result)
    mirrored = mirrored_strategy()
    # 64 px: at 32 px the 0.5x pass reaches a 1x1 feature map, whose BatchNorm gradients overflow
    # float16 until the dynamic loss scale has dropped to ~64 (more than these few steps)
    images, labels = batch(64, 4)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    for tag, prec, strategy in (
        ("mixed_bfloat16", "mixed_bfloat16", tf.distribute.get_strategy()),
        ("mixed_float16", "mixed_float16", tf.distribute.get_strategy()),
        ("mixed_float16_x2", "mixed_float16", mirrored),
    ):
        t = time.time()
        # as the trainer: SyncBN only with more than one replica
        model = make(
            strategy,
            0.005,
            precision=prec,
            aux_head=False,
            sync_bn=strategy.num_replicas_in_sync > 1,
        )
        # float16: the dynamic loss scale starts at 2**15 and halves on each overflowing step;
        # here it settles after ~4 skipped steps, so give it 10
        logs = steps(model, strategy, ds, 10 if prec == "mixed_float16" else 6)
        result[f"{tag}_losses"] = np.array([l["loss"] for l in logs])
        if prec == "mixed_float16":
            result[f"{tag}_scale"] = float(model.optimizer.dynamic_scale.numpy())
        timings[tag] = time.time() - t
    result["timings"] = json.dumps(timings)
    np.savez(out_path, **result)


if __name__ == "__main__":
    {"equivalence": equivalence, "precision": precision}[sys.argv[1]](sys.argv[2])
