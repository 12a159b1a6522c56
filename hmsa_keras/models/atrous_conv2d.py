"""``AtrousConv2D``: a dilated ``keras.layers.Conv2D`` with a fast backward pass.

TensorFlow runs a dilated convolution as SpaceToBatch -> Conv2D -> BatchToSpace, and
the gradient of that with respect to its *input* is pathologically slow on CPU: the
Conv2DBackpropInput over the space-to-batch'd tensor (batch x rate^2 tiny images) took
0.08-0.59 s for one 3x3 ASPP convolution at rates 6/12/18, almost independent of the
feature map size (benchmarks/profiling/, docs/benchmarks.md). In the MobileNetV2 HMSA step that
was more than half of the step, and it was paid again at the 0.5 scale.

For a stride-1, SAME-padded convolution with an odd kernel, the input gradient is itself
a dilated convolution of the incoming gradient with the spatially flipped,
in/out-transposed kernel, which TensorFlow runs 4-30x faster; the kernel gradient (also slow
through SpaceToBatch: 0.36-0.69 s for a 2048-channel ResNet-50 ASPP branch) is one
[Cin, n] x [n, Cout] matmul per kernel tap over the n pixels it overlaps, up to 20x faster. The forward pass
is TensorFlow's own.
Weights, config and outputs are those of ``keras.layers.Conv2D``; any other setting
(strides, VALID padding, even kernels, groups, channels_first) falls back to it.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def dilated_conv2d(x, kernel, rate):
    """SAME, stride-1 NHWC convolution with dilation ``rate`` (h, w) and the fast gradients."""
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
            if (static_h is not None and abs(oy) >= static_h) or (static_w is not None and abs(ox) >= static_w):
                taps.append(tf.zeros([cin, cout], dy.dtype))  # the tap only ever reads padding
                continue
            with tf.control_dependencies(taps[-1:]):
                seen = x[:, max(0, oy):end(h, max(0, -oy)), max(0, ox):end(w, max(0, -ox)), :]
                grad = dy[:, max(0, -oy):end(h, max(0, oy)), max(0, -ox):end(w, max(0, ox)), :]
            taps.append(tf.matmul(tf.reshape(seen, [-1, cin]), tf.reshape(grad, [-1, cout]), transpose_a=True))
    return tf.reshape(tf.stack(taps), [kh, kw, cin, cout])


@keras.saving.register_keras_serializable(package="hmsa_keras")
class AtrousConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose dilated, SAME, stride-1 case has the fast gradients."""

    def convolution_op(self, inputs, kernel):
        if (max(self.dilation_rate) == 1 or tuple(self.strides) != (1, 1) or self.padding != "same"
                or self.data_format != "channels_last" or self.groups != 1
                or any(k % 2 == 0 for k in self.kernel_size)):
            return super().convolution_op(inputs, kernel)
        return dilated_conv2d(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel), self.dilation_rate)
