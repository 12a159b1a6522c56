"""The speed-ups keep the numerics: every rewritten op against NumPy, and the
training gradients of a model with the fast path against the same model without it
(within 1e-5 relative: float32 summation order only). Fast tests (tiny shapes)."""

import numpy as np
import pytest

from tests.conftest import TINY


def _numpy_dilated_conv(x, kernel, rate, out_grad):
    """SAME, stride-1 dilated convolution and its gradients, tap by tap in NumPy (float64):
    returns (y, dL/dx, dL/dkernel) for L = sum(y * out_grad)."""
    x, kernel, out_grad = (np.asarray(a, np.float64) for a in (x, kernel, out_grad))
    _, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    ph, pw = (kh // 2) * rate[0], (kw // 2) * rate[1]
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = np.zeros(x.shape[:3] + kernel.shape[3:])
    dpadded = np.zeros_like(padded)
    dkernel = np.zeros_like(kernel)
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i * rate[0], i * rate[0] + h), slice(j * rate[1], j * rate[1] + w)
            seen = padded[:, rows, cols, :]
            y += seen @ kernel[i, j]
            dpadded[:, rows, cols, :] += out_grad @ kernel[i, j].T
            dkernel[i, j] = np.einsum("bhwc,bhwd->cd", seen, out_grad)
    return y, dpadded[:, ph : ph + h, pw : pw + w, :], dkernel


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    "shape, kernel_hw, rate",
    [
        ((2, 9, 13, 5), (3, 3), (2, 2)),
        ((1, 5, 11, 3), (3, 3), (6, 2)),  # vertical taps read only padding (rate >= height)
        ((1, 8, 16, 4), (3, 3), (12, 18)),  # every off-centre tap reads only padding
        ((2, 7, 9, 3), (5, 3), (2, 3)),
    ],
)
def test_dilated_conv2d_matches_numpy(native, shape, kernel_hw, rate):
    """tf_ops.dilated_conv2d: output, input gradient and kernel gradient equal a tap-by-tap
    NumPy convolution, on the native oneDNN kernels and on the portable path."""
    import tensorflow as tf

    from hmsa_keras.models import tf_ops

    if native and not tf_ops.native_dilation():
        pytest.skip("this TensorFlow has no native dilated Conv2DBackpropInput")
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(*kernel_hw, shape[-1], 6)).astype(np.float32)
    out_grad = rng.normal(size=(*shape[:3], 6)).astype(np.float32)
    xt, kt = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([xt, kt])
        y = tf_ops.dilated_conv2d(xt, kt, rate, native=native)
    dx, dk = tape.gradient(y, [xt, kt], output_gradients=tf.constant(out_grad))
    for name, got, want in zip(
        ("output", "input gradient", "kernel gradient"),
        (y, dx, dk),
        _numpy_dilated_conv(x, kernel, rate, out_grad),
    ):
        np.testing.assert_allclose(
            got.numpy(), want, atol=1e-5 * np.abs(want).max(), rtol=0, err_msg=name
        )


def _step_gradients(model, images, labels, switch=None, on=True):
    """Loss and gradients of one training step of ``model`` on a fixed batch, traced with
    ``switch`` (a speed-up's module-level [bool]) set to ``on``."""
    import tensorflow as tf

    saved = list(switch) if switch is not None else None
    if switch is not None:
        switch[:] = [on]  # read when the step is traced
    try:

        @tf.function
        def step(images, labels):
            with tf.GradientTape() as tape:
                total, _, _ = model.compute_loss_terms(images, labels, training=True)
            return total, tape.gradient(total, model.trainable_variables)

        total, grads = step(images, labels)
        return float(total), [g.numpy().astype(np.float64) for g in grads]
    finally:
        if switch is not None:
            switch[:] = saved


def _tiny_os8_model(dtype=None):
    """A tiny output-stride-8 HMSA model (dilated trunk and ASPP, BatchNorm everywhere) and a
    fixed batch."""
    import keras
    import tensorflow as tf

    import hmsa_keras

    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(dtype or previous)
    try:
        model = hmsa_keras.build_model(num_classes=4, output_stride=8, **TINY)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="ce")
    images = tf.random.stateless_normal((2, 64, 64, 3), seed=(1, 2))
    labels = tf.random.stateless_uniform((2, 64, 64), seed=(3, 4), maxval=4, dtype=tf.int32)
    return model, images, labels


@pytest.mark.slow  # traces two training graphs: ~15 s on an idle machine
def test_training_gradients_unchanged_by_native_dilated_convolutions():
    """Loss and gradients of a training step with the native dilated convolutions equal
    those of the previous (SpaceToBatch) implementation within 1e-5 relative."""
    from hmsa_keras.models import tf_ops

    if not tf_ops.native_dilation():
        pytest.skip("this TensorFlow has no native dilated Conv2DBackpropInput")
    model, images, labels = _tiny_os8_model()
    loss_fast, fast = _step_gradients(model, images, labels, tf_ops._NATIVE_DILATION, True)
    loss_slow, slow = _step_gradients(model, images, labels, tf_ops._NATIVE_DILATION, False)
    assert abs(loss_fast - loss_slow) <= 1e-5 * abs(loss_slow)
    scale = max(np.abs(b).max() for b in slow)
    worst = max(np.abs(a - b).max() for a, b in zip(fast, slow))
    assert worst <= 1e-5 * scale, (worst, scale)
    assert sum(np.abs(b).max() > 0 for b in slow) > 0.9 * len(slow)  # not trivially zero
