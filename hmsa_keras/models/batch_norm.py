"""``FusedBatchNormalization``: ``keras.layers.BatchNormalization`` whose training-mode
pass is TensorFlow's fused kernel under TensorFlow.

Keras 3 normalises a batch with separate ops: the moments (a mean, a squared difference
and a second mean over the batch and spatial axes), then a multiply-add, each a full pass
over the feature map, and as many again in the backward pass (the gradients of two
reductions, their broadcasts and the element-wise ops). TensorFlow's ``FusedBatchNormV3``
(oneDNN on x86-64 CPUs) computes the statistics and the normalised output in one kernel and
its gradient ``FusedBatchNormGradV3`` in another; in the two-scale ResNet-50 training step
that the side-by-side benchmark against the reference times, BatchNorm is every third layer
(docs/benchmarks.md, "Against the PyTorch reference").

Weights, config, outputs and moving-statistics updates are those of
``keras.layers.BatchNormalization`` (the moving variance follows the *biased* batch variance,
as Keras does; the fused op's Bessel-corrected one is converted back). The fused path is
taken only under the TensorFlow backend, in training mode, for a 4-D channels-last input
without mask, renorm or synchronisation, with both ``center`` and ``scale``; everything else
(inference, other backends, synchronized BatchNorm) is ``keras.layers.BatchNormalization``
exactly. The TensorFlow call is :func:`hmsa_keras.models.tf_ops.fused_batch_norm_training`.
"""

from __future__ import annotations

import keras

_FUSED_DTYPES = ("float32", "bfloat16", "float16")
ENABLED = [True]  # [False]: every call takes Keras' path (benchmark ablations, tests); read at trace time


@keras.saving.register_keras_serializable(package="hmsa_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with TensorFlow's fused training kernel (see the
    module docstring); same arguments."""

    def _fused(self, inputs, training, mask):
        return (ENABLED[0] and training and self.trainable and mask is None
                and keras.backend.backend() == "tensorflow"
                and not self.renorm and not self.synchronized and self.center and self.scale
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES)

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        from hmsa_keras.models import tf_ops

        outputs, mean, variance = tf_ops.fused_batch_norm_training(
            inputs, self.gamma, self.beta, self.epsilon)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return keras.ops.cast(outputs, self.compute_dtype)
