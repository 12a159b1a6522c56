"""The TensorFlow-only pieces of the model code, in one module.

Imported lazily, and only when ``keras.backend.backend() == "tensorflow"`` (see
:func:`hmsa_keras.models.fusion.tf_ops`); every other backend runs the ``keras.ops``
code beside each call site. What lives here and why:

- :func:`resize`, :func:`spatial_size`, :func:`scaled_size`, :func:`argmax_classes`:
  ``tf.image.resize`` with a *dynamic* size (``tf.shape``) exports to SavedModel and
  TFLite, which ``keras.ops.image.resize`` with a symbolic size does not in Keras 3.15;
  ``keras.ops.argmax`` adds a negative-zero fix (``signbit``) that is no TFLite builtin.
- :func:`dilated_conv2d`: the fast gradients of a dilated convolution (see
  :mod:`hmsa_keras.models.atrous_conv2d`).
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
def dilated_conv2d(x, kernel, rate):
    """SAME, stride-1 NHWC convolution with dilation ``rate`` (h, w) and the fast gradients."""
    x, kernel = tf.convert_to_tensor(x), tf.convert_to_tensor(kernel)
    rate = list(rate)

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.convolution(x, kernel, padding="SAME", dilations=rate)

        def grad(dy):
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
