"""``AtrousConv2D``: a dilated ``keras.layers.Conv2D`` with a fast backward pass on TensorFlow.

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
[Cin, n] x [n, Cout] matmul per kernel tap over the n pixels it overlaps, up to 20x faster.
The forward pass is TensorFlow's own; the code is in :mod:`hmsa_keras.models.tf_ops`.

Weights, config and outputs are those of ``keras.layers.Conv2D``. The fast path is taken
only when ``keras.backend.backend() == "tensorflow"``; on other backends (JAX, PyTorch),
and for any other setting (strides, VALID padding, even kernels, groups, channels_first),
the layer is exactly ``keras.layers.Conv2D`` with ``dilation_rate``.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="hmsa_keras")
class AtrousConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose dilated, SAME, stride-1 case has the fast gradients
    under TensorFlow (see module docstring)."""

    def convolution_op(self, inputs, kernel):
        if (
            keras.backend.backend() != "tensorflow"
            or max(self.dilation_rate) == 1
            or tuple(self.strides) != (1, 1)
            or self.padding != "same"
            or self.data_format != "channels_last"
            or self.groups != 1
            or any(k % 2 == 0 for k in self.kernel_size)
        ):
            return super().convolution_op(inputs, kernel)
        from hmsa_keras.models import tf_ops

        return tf_ops.dilated_conv2d(inputs, kernel, self.dilation_rate)
