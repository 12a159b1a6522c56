"""The speed-ups of issue 17 keep the numerics: every rewritten op against NumPy, and the
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
    return y, dpadded[:, ph:ph + h, pw:pw + w, :], dkernel


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("shape, kernel_hw, rate", [
    ((2, 9, 13, 5), (3, 3), (2, 2)),
    ((1, 5, 11, 3), (3, 3), (6, 2)),    # vertical taps read only padding (rate >= height)
    ((1, 8, 16, 4), (3, 3), (12, 18)),  # every off-centre tap reads only padding
    ((2, 7, 9, 3), (5, 3), (2, 3)),
])
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
    for name, got, want in zip(("output", "input gradient", "kernel gradient"), (y, dx, dk),
                               _numpy_dilated_conv(x, kernel, rate, out_grad)):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5 * np.abs(want).max(), rtol=0, err_msg=name)


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


@pytest.mark.slow  # traces three training graphs: ~25 s on an idle machine
def test_training_gradients_with_fused_batch_norm_as_accurate_as_keras():
    """The fused BatchNorm keeps the loss within 1e-5 relative of Keras' BatchNormalization;
    its gradients cannot be compared at 1e-5: backpropagating through ~60 randomly initialised
    BatchNorm layers amplifies float32 rounding, and Keras' own float32 gradients are ~1e-3
    (relative L2) from the same step in float64 (ResNet-50: ~4e-2, both implementations).
    So both float32 steps are compared with the float64 one (Keras' BatchNorm: the fused
    kernel has no float64), and the fused step must be as accurate as Keras' (within 2x)."""
    from hmsa_keras.models import batch_norm

    model, images, labels = _tiny_os8_model()
    loss_fused, fused = _step_gradients(model, images, labels, batch_norm.ENABLED, True)
    loss_keras, plain = _step_gradients(model, images, labels, batch_norm.ENABLED, False)
    assert abs(loss_fused - loss_keras) <= 1e-5 * abs(loss_keras)
    import tensorflow as tf

    model64, _, _ = _tiny_os8_model("float64")
    model64.set_weights(model.get_weights())
    loss64, exact = _step_gradients(model64, tf.cast(images, tf.float64), labels)
    assert abs(loss_fused - loss64) <= 1e-5 * abs(loss64)

    def error(grads):
        return np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads, exact))
                       / sum((b ** 2).sum() for b in exact))

    assert error(plain) < 1e-2 and error(fused) <= 2.0 * error(plain), (error(fused), error(plain))


def _numpy_batch_norm(x, gamma, beta, epsilon, out_grad):
    """Training-mode BatchNorm over (B, H, W) and its gradients for L = sum(y * out_grad),
    float64: (y, dx, dgamma, dbeta, mean, biased variance)."""
    x, out_grad = np.asarray(x, np.float64), np.asarray(out_grad, np.float64)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    inv = 1.0 / np.sqrt(var + epsilon)
    xhat = (x - mean) * inv
    y = xhat * gamma + beta
    dbeta = out_grad.sum(axis=(0, 1, 2))
    dgamma = (out_grad * xhat).sum(axis=(0, 1, 2))
    dx = gamma * inv / n * (n * out_grad - dbeta - xhat * dgamma)
    return y, dx, dgamma, dbeta, mean, var


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 4), (2, 1, 1, 4), (3, 8, 6, 16)])
def test_fused_batch_norm_matches_numpy_and_keras(shape):
    """FusedBatchNormalization in training: output, gradients (input, gamma, beta) and the
    moving statistics equal NumPy's batch normalisation and keras.layers.BatchNormalization
    (biased variance in the moving average, as Keras); inference is Keras' own path."""
    import keras
    import tensorflow as tf

    from hmsa_keras.models.batch_norm import FusedBatchNormalization

    rng = np.random.default_rng(1)
    x = (3.0 * rng.normal(size=shape) + 1.5).astype(np.float32)
    out_grad = rng.normal(size=shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    beta = rng.normal(size=shape[-1]).astype(np.float32)
    layers = {"fused": FusedBatchNormalization(momentum=0.9, epsilon=1e-5),
              "keras": keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)}
    results = {}
    for name, layer in layers.items():
        layer.build(shape)
        layer.set_weights([gamma, beta, np.full(shape[-1], 0.3, np.float32), np.full(shape[-1], 2.0, np.float32)])
        assert name == "keras" or layer._fused(tf.constant(x), True, None)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
        grads = tape.gradient(y, [xt, layer.gamma, layer.beta], output_gradients=tf.constant(out_grad))
        results[name] = [y.numpy()] + [g.numpy() for g in grads] + [
            layer.moving_mean.numpy(), layer.moving_variance.numpy(), layer(xt, training=False).numpy()]
    y, dx, dgamma, dbeta, mean, var = _numpy_batch_norm(x, gamma, beta, 1e-5, out_grad)
    want = [y, dx, dgamma, dbeta, 0.9 * 0.3 + 0.1 * mean, 0.9 * 2.0 + 0.1 * var]
    names = ("output", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance")
    for name, got, expected in zip(names, results["fused"], want):
        np.testing.assert_allclose(got, expected, atol=1e-5 * max(np.abs(expected).max(), 1.0), rtol=0,
                                   err_msg=name)
    for name, got, expected in zip(names + ("inference output",), results["fused"], results["keras"]):
        if name == "output" and np.prod(shape[:3]) == 1:
            continue  # Keras' x * inv + (beta - mean * inv) cancels 316x-scaled terms here; NumPy agrees
        np.testing.assert_allclose(got, expected, atol=1e-5 * max(np.abs(expected).max(), 1.0), rtol=0,
                                   err_msg=f"{name} vs keras")


def test_fused_batch_norm_bfloat16_and_fallbacks():
    """bfloat16 inputs (mixed_bfloat16): bfloat16 output within bfloat16 rounding of the
    float32 result; synchronized, masked, 2-D and inference calls take Keras' own path."""
    import keras
    import tensorflow as tf

    from hmsa_keras.models.batch_norm import FusedBatchNormalization

    x = tf.random.stateless_normal((2, 6, 5, 8), seed=(1, 1)) * 2.0 + 1.0
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    layer.build(x.shape)
    xb = tf.cast(x, tf.bfloat16)
    assert layer._fused(xb, True, None)
    y = layer(xb, training=True)
    assert y.dtype == tf.bfloat16
    reference = keras.layers.BatchNormalization()
    reference.build(x.shape)
    want = reference(tf.cast(xb, tf.float32), training=True).numpy()
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), want, atol=2e-2 * np.abs(want).max())
    np.testing.assert_allclose(layer.moving_mean.numpy(), reference.moving_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-5)
    assert not layer._fused(xb, False, None)
    assert not layer._fused(xb, True, tf.ones((2, 6, 5)))
    assert not FusedBatchNormalization(synchronized=True)._fused(x, True, None)
    assert not FusedBatchNormalization(center=False)._fused(x, True, None)
    assert not FusedBatchNormalization()._fused(tf.ones((4, 3)), True, None)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is FusedBatchNormalization and clone.get_config() == layer.get_config()


def test_segmenter_batch_norms_are_fused():
    import keras

    from hmsa_keras.models.batch_norm import FusedBatchNormalization
    from hmsa_keras.models.segmenter import build_segmenter

    net = build_segmenter(3, **TINY)

    def layers(model):
        for layer in model.layers:
            yield from layers(layer) if isinstance(layer, keras.Model) else (layer,)

    norms = [layer for layer in layers(net) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) > 50 and all(type(n) is FusedBatchNormalization for n in norms)
