"""ConfusionMatrixMetric and the losses under MirroredStrategy over 2 logical CPUs.

Logical devices must be configured before TensorFlow initialises, which other tests in
the same process will already have done, so the check runs in a fresh interpreter.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter with 2 logical CPUs

SCRIPT = textwrap.dedent(r"""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from hmsa_keras import losses
    from hmsa_keras import metrics as M

    K = 4
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, size=(4, 12, 12)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = 255
    labels[2:] = np.where(labels[2:] == 3, 255, labels[2:])  # replicas differ in #valid
    logits = rng.standard_normal((4, 12, 12, K)).astype(np.float32)

    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        met = M.ConfusionMatrixMetric(K)

    def value_fn(ctx):
        i = ctx.replica_id_in_sync_group
        return (tf.constant(labels[2 * i:2 * i + 2]), tf.constant(logits[2 * i:2 * i + 2]))

    y, x = strategy.experimental_distribute_values_from_function(value_fn)

    @tf.function
    def step(y, x):
        def replica_fn(y, x):
            met.update_state(y, x)
            ce = losses.cross_entropy(y, x)
            rmi = losses.rmi_loss(y, x)
            local_miou = met.result()  # replica context: this replica's pixels only
            return ce, rmi, local_miou
        ce, rmi, local_miou = strategy.run(replica_fn, args=(y, x))
        ce = [strategy.reduce("SUM", t, axis=None) for t in ce]
        rmi = [strategy.reduce("SUM", t, axis=None) for t in rmi]
        return ce, rmi, strategy.experimental_local_results(local_miou)

    ce, rmi, local = step(y, x)
    full = M.confusion_matrix(labels, logits, K).numpy()
    np.testing.assert_array_equal(met.matrix().numpy(), full)
    ref_miou = M.compute_metrics(full)["miou"]
    np.testing.assert_allclose(float(met.result()), ref_miou, rtol=1e-6)
    halves = [M.compute_metrics(M.confusion_matrix(labels[2*i:2*i+2], logits[2*i:2*i+2], K)
                                .numpy())["miou"] for i in range(2)]
    np.testing.assert_allclose([float(v) for v in local], halves, rtol=1e-6)

    # CE: global sum / global weight == loss of the whole batch
    s, w = losses.cross_entropy(labels, logits)
    np.testing.assert_allclose(float(ce[0]), float(s), rtol=1e-5)
    assert float(ce[1]) == float(w)
    # RMI: (sum of value_r * B_r) / sum B_r == mean of the per-replica values
    vals = [losses.reduce_loss(*losses.rmi_loss(labels[2*i:2*i+2], logits[2*i:2*i+2]))
            for i in range(2)]
    assert float(rmi[1]) == 4.0
    np.testing.assert_allclose(float(rmi[0]) / float(rmi[1]),
                               np.mean([float(v) for v in vals]), rtol=1e-5)

    # Recommended recipe: all-reduce (loss_sum, weight), differentiate loss_sum / global
    # weight per replica; the SUM of the replicas' gradients is the whole-batch gradient.
    with strategy.scope():
        v = tf.Variable(1.5)

    @tf.function
    def grad_step(y, x):
        def replica_fn(y, x):
            ctx = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                s, w = losses.cross_entropy(y, x * v)
                gw = ctx.all_reduce("SUM", w)
                obj = s / gw
            g = tape.gradient(obj, v)
            return ctx.all_reduce("SUM", g), ctx.all_reduce("SUM", s) / gw
        g, loss = strategy.run(replica_fn, args=(y, x))
        return strategy.experimental_local_results(g), strategy.experimental_local_results(loss)

    g, loss = grad_step(y, x)
    vv = tf.Variable(1.5)
    with tf.GradientTape() as tape:
        ref = losses.reduce_loss(*losses.cross_entropy(labels, logits * vv))
    ref_g = tape.gradient(ref, vv)
    for i in range(2):
        np.testing.assert_allclose(float(g[i]), float(ref_g), rtol=1e-5)
        np.testing.assert_allclose(float(loss[i]), float(ref), rtol=1e-5)

    met.reset_state()
    assert met.matrix().numpy().sum() == 0
    print("DISTRIBUTED_OK")
""")


def test_metric_and_losses_under_mirrored_strategy():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "DISTRIBUTED_OK" in proc.stdout, (
        f"rc={proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )
