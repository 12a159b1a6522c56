"""The TensorFlow-only pieces of the model code, in one module.

Imported lazily, and only when ``keras.backend.backend() == "tensorflow"`` (see
:func:`hmsa_keras.models.fusion.tf_ops`); every other backend runs the ``keras.ops``
code beside each call site. What lives here and why:

- :func:`resize`, :func:`spatial_size`, :func:`scaled_size`, :func:`argmax_classes`:
  ``tf.image.resize`` with a *dynamic* size (``tf.shape``) exports to SavedModel and
  TFLite, which ``keras.ops.image.resize`` with a symbolic size does not in Keras 3.15;
  ``keras.ops.argmax`` adds a negative-zero fix (``signbit``) that is no TFLite builtin.
- :func:`dilated_conv2d`: a dilated convolution on TensorFlow's native dilated kernels
  where it has them, with a fast kernel gradient (see :mod:`hmsa_keras.models.atrous_conv2d`).
- :func:`cholesky`, :func:`cholesky_solve`: ``keras.ops.cholesky`` adds
  ``check_numerics``, which would turn a diverging RMI loss into an exception instead of
  the NaN loss that the trainer reports.
"""

from __future__ import annotations

import tensorflow as tf


# --------------------------------------------------------------------------- resizing
def spatial_size(x):
    """(H, W) of an NHWC tensor as an int32 [2] tensor (dynamic sizes allowed)."""
    return tf.shape(x)[1:3]


def resize(x, size):
    """Bilinear, half-pixel (align_corners=False), no antialias; keeps ``x``'s dtype."""
    return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)


def scaled_size(images, scale):
    """(floor(H * scale), floor(W * scale)) in float32 arithmetic, at least 1 pixel."""
    hw = tf.cast(tf.shape(images)[1:3], tf.float32)
    return tf.maximum(tf.cast(tf.floor(hw * tf.cast(scale, tf.float32)), tf.int32), 1)


def argmax_classes(logits):
    """int32 argmax over the last axis."""
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


# ----------------------------------------------------------------------- linear algebra
def cholesky(m):
    return tf.linalg.cholesky(m)


def cholesky_solve(chol, rhs):
    return tf.linalg.cholesky_solve(chol, rhs)


# ------------------------------------------------------------------ dilated convolution
_NATIVE_DILATION = []  # [] = probe; [True] / [False] forces (tests, benchmark ablations)
_NATIVE_DILATION_DTYPES = {}  # dtype name -> probed bool


def native_dilation(dtype=tf.float32) -> bool:
    """Whether this TensorFlow runs ``Conv2D`` *and* ``Conv2DBackpropInput`` with dilations
    natively for ``dtype`` (the oneDNN CPU kernels, TensorFlow's default on x86-64, have
    float32 and bfloat16; cuDNN on GPU).

    Probed once per dtype, eagerly, on a 5x5 tensor: TensorFlow's own Eigen CPU kernels
    (float64, or any dtype with ``TF_ENABLE_ONEDNN_OPTS=0``) run a dilated ``Conv2D`` forward
    but reject ``Conv2DBackpropInput`` with dilations ("Current CPU implementations do not
    yet support dilation rates larger than 1"). ``_NATIVE_DILATION = [bool]`` overrides."""
    if _NATIVE_DILATION:
        return _NATIVE_DILATION[0]
    dtype = tf.as_dtype(dtype)
    if dtype.name not in _NATIVE_DILATION_DTYPES:
        with tf.init_scope():
            try:
                ones = tf.ones([1, 5, 5, 1], dtype)
                tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=[1, 5, 5, 1],
                    filter=tf.ones([3, 3, 1, 1], dtype),
                    out_backprop=ones,
                    strides=[1, 1, 1, 1],
                    padding="SAME",
                    dilations=[1, 2, 2, 1],
                )
                _NATIVE_DILATION_DTYPES[dtype.name] = True
            except (
                tf.errors.InvalidArgumentError,
                tf.errors.UnimplementedError,
                tf.errors.NotFoundError,
            ):
                _NATIVE_DILATION_DTYPES[dtype.name] = False
    return _NATIVE_DILATION_DTYPES[dtype.name]


def dilated_conv2d(x, kernel, rate, native=None):
    """SAME, stride-1 NHWC convolution with dilation ``rate`` (h, w) and the fast gradients.

    ``native`` (default :func:`native_dilation` of ``x``'s dtype): the forward pass and the input
    gradient are TensorFlow's dilated ``Conv2D`` / ``Conv2DBackpropInput`` ops, which oneDNN
    runs directly and which skip the kernel taps that only read padding. Not
    ``tf.nn.convolution``: for a dilation it goes through SpaceToBatch -> Conv2D ->
    BatchToSpace, which pads the map to a multiple of the rate and convolves ``rate**2``
    tiny images; a ResNet-50 ASPP branch at rate 36 on a 32x64 map took 22x the native time
    (benchmarks/profiling/dilated_conv_ops.py). Without native kernels, the forward pass is
    ``tf.nn.convolution`` and the input gradient a dilated convolution of the output
    gradient with the flipped, in/out-transposed kernel. The kernel gradient is
    :func:`_kernel_gradient` in both cases (faster than ``Conv2DBackpropFilter``)."""
    x, kernel = tf.convert_to_tensor(x), tf.convert_to_tensor(kernel)
    rate = [int(r) for r in rate]
    native = native_dilation(x.dtype) if native is None else native

    @tf.custom_gradient
    def conv(x, kernel):
        if native:
            y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=rate)
        else:
            y = tf.nn.convolution(x, kernel, padding="SAME", dilations=rate)

        def grad(dy):
            if native:
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x),
                    filter=kernel,
                    out_backprop=dy,
                    strides=[1, 1, 1, 1],
                    padding="SAME",
                    dilations=[1, *rate, 1],
                )
            else:
                flipped = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
                dx = tf.nn.convolution(dy, flipped, padding="SAME", dilations=rate)
            return dx, _kernel_gradient(x, dy, kernel.shape, rate)

        return y, grad

    return conv(x, kernel)


def _kernel_gradient(x, dy, kernel_shape, rate):
    """dL/dkernel one tap at a time: for the tap at offset (oy, ox), the part of the input
    that the tap reads times the part of the output gradient it writes, a
    [Cin, n] x [n, Cout] matmul (n: overlapping pixels; taps entirely in the zero padding
    give zeros). Each tap waits for the previous one, so one input slice is alive at a time:
    in parallel, the nine copies added 0.4 GB to a 512x1024 ResNet-50 ASPP's backward pass."""
    kh, kw, cin, cout = kernel_shape
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    static_h, static_w = x.shape[1], x.shape[2]

    def end(size, cut):  # slice end, never a negative index
        return tf.maximum(size - cut, 0)

    taps = []
    for i in range(kh):
        for j in range(kw):
            oy, ox = (i - kh // 2) * rate[0], (j - kw // 2) * rate[1]
            if (static_h is not None and abs(oy) >= static_h) or (
                static_w is not None and abs(ox) >= static_w
            ):
                taps.append(tf.zeros([cin, cout], dy.dtype))  # the tap only ever reads padding
                continue
            with tf.control_dependencies(taps[-1:]):
                seen = x[:, max(0, oy) : end(h, max(0, -oy)), max(0, ox) : end(w, max(0, -ox)), :]
                grad = dy[:, max(0, -oy) : end(h, max(0, oy)), max(0, -ox) : end(w, max(0, ox)), :]
            taps.append(
                tf.matmul(
                    tf.reshape(seen, [-1, cin]), tf.reshape(grad, [-1, cout]), transpose_a=True
                )
            )
    return tf.reshape(tf.stack(taps), [kh, kw, cin, cout])
