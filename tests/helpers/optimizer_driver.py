"""CoupledSGD under MirroredStrategy over 2 logical CPUs, inside a LossScaleOptimizer.

    python optimizer_driver.py OUT.npz

Each replica contributes its own gradient (scaled by the loss scale); Keras all-reduces them
(sum), the LossScaleOptimizer unscales, and CoupledSGD with the per-epoch poly schedule
updates. Writes the initial values, per-replica gradients, LRs and the values after every
step to OUT.npz; tests/test_optimizer.py compares them with a NumPy torch.optim.SGD model.
"""

import sys

from common import setup_tf

tf = setup_tf(logical_cpus=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from hmsa_keras.training.optimizer import build_optimizer  # noqa: E402

STEPS, STEPS_PER_EPOCH, EPOCHS = 6, 2, 3
BASE_LR, MOMENTUM, WEIGHT_DECAY, POWER = 0.05, 0.9, 0.01, 2.0
SHAPES = {"kernel": (3, 2), "gamma": (2,), "bias": (2,)}


def main(out_path):
    rng = np.random.default_rng(3)
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = {
        n: (0.1 * rng.standard_normal((STEPS, 2, *s))).astype(np.float32) for n, s in SHAPES.items()
    }
    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        variables = [keras.Variable(init[n], name=n) for n in SHAPES]
        inner = build_optimizer(
            None,
            BASE_LR,
            STEPS_PER_EPOCH * EPOCHS,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
            lr_power=POWER,
            weight_decay_mode="coupled",
            lr_schedule_granularity="epoch",
            steps_per_epoch=STEPS_PER_EPOCH,
        )
        optimizer = keras.optimizers.LossScaleOptimizer(inner, initial_scale=1024.0)
        optimizer.build(variables)
    table = {n: tf.constant(g) for n, g in grads.items()}

    @tf.function
    def step(k):
        def replica_fn():
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            scale = optimizer.scale_loss(tf.constant(1.0))
            pairs = [(table[n][k, r] * scale, v) for n, v in zip(SHAPES, variables)]
            optimizer.apply_gradients(pairs)

        strategy.run(replica_fn)

    after = {n: [] for n in SHAPES}
    lrs = []
    for k in range(STEPS):
        lrs.append(float(inner.learning_rate))
        step(tf.constant(k))
        for n, v in zip(SHAPES, variables):
            after[n].append(np.asarray(v.numpy()))
    np.savez(
        out_path,
        replicas=strategy.num_replicas_in_sync,
        lrs=np.array(lrs),
        settings=np.array([BASE_LR, MOMENTUM, WEIGHT_DECAY, POWER, EPOCHS, STEPS_PER_EPOCH]),
        scale=float(optimizer.dynamic_scale.numpy()),
        **{f"{n}/init": init[n] for n in SHAPES},
        **{f"{n}/grads": grads[n] for n in SHAPES},
        **{f"{n}/after": np.stack(after[n]) for n in SHAPES},
    )


if __name__ == "__main__":
    main(sys.argv[1])
