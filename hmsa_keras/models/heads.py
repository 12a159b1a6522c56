"""DeepLabV3+ decoder and the segmentation, attention and auxiliary heads.

Functional building blocks: each function takes Keras tensors and returns Keras
tensors, naming its layers with a prefix so that parts can be frozen by name
(``aspp_``/``decoder_``/``seg_``/``aux_`` form the segmentation head, ``attn_``
the attention head). Heads follow the reference (NVIDIA semantic-segmentation
``network/deepv3.py: DeepV3Plus`` and ``network/mscale.py: MscaleV3Plus``; the attention
head is ``network/utils.py: make_attn_head``). Backend-agnostic (``keras.layers`` and
:mod:`hmsa_keras.models.fusion`'s resize).
"""

from __future__ import annotations

import keras

from hmsa_keras.models import fusion as F
from hmsa_keras.models.atrous_conv2d import AtrousConv2D

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


@keras.saving.register_keras_serializable(package="hmsa_keras")
class ResizeLike(keras.layers.Layer):
    """Bilinear (half-pixel) resize of ``x`` to the spatial size of ``reference``.

    Under TensorFlow ``tf.image.resize`` with a dynamic size, which exports to SavedModel
    and TFLite (``keras.ops.image.resize`` with a symbolic size fails at SavedModel export
    in Keras 3.15); on other backends ``keras.ops.image.resize`` (see
    :func:`hmsa_keras.models.fusion.resize`).
    """

    def call(self, x, reference):
        return F.resize(x, F.spatial_size(reference))

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


class LayerFactory:
    """Creates the head layers with one BatchNorm setting, so nothing is global."""

    def __init__(self, bn_momentum=0.9, sync_bn=False, bn_epsilon=1e-5):
        self.bn_momentum = bn_momentum
        self.sync_bn = sync_bn
        self.bn_epsilon = bn_epsilon

    def bn(self, name):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, synchronized=self.sync_bn, name=name
        )

    def conv_bn_relu(self, x, filters, kernel_size, name, dilation_rate=1):
        conv = AtrousConv2D if dilation_rate > 1 else keras.layers.Conv2D
        x = conv(
            filters,
            kernel_size,
            padding="same",
            dilation_rate=dilation_rate,
            use_bias=False,
            name=f"{name}_conv",
        )(x)
        x = self.bn(f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)


def aspp(features, layers: LayerFactory, output_stride=16, channels=256, dropout=0.0):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 and image pooling, then 1x1."""
    branches = [layers.conv_bn_relu(features, channels, 1, "aspp_1x1")]
    for i, rate in enumerate(ASPP_RATES[output_stride]):
        branches.append(layers.conv_bn_relu(features, channels, 3, f"aspp_atrous{i + 1}", rate))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(features)
    pooled = layers.conv_bn_relu(pooled, channels, 1, "aspp_pool_proj")
    branches.append(ResizeLike(name="aspp_pool_resize")(pooled, features))
    x = keras.layers.Concatenate(name="aspp_concat")(branches)
    x = layers.conv_bn_relu(x, channels, 1, "aspp_project")
    if dropout:
        x = keras.layers.Dropout(dropout, name="aspp_dropout")(x)
    return x


def decoder(aspp_out, low_level, layers: LayerFactory, low_level_channels=48):
    """DeepLabV3+ fusion of ASPP output (upsampled) with projected stride-4 features."""
    low = layers.conv_bn_relu(low_level, low_level_channels, 1, "decoder_low")
    up = ResizeLike(name="decoder_upsample")(aspp_out, low)
    return keras.layers.Concatenate(name="decoder_concat")([up, low])


def conv_head(x, layers: LayerFactory, out_channels, prefix, channels=256):
    """3x3-BN-ReLU, 3x3-BN-ReLU, 1x1: the reference's segmentation and attention head."""
    x = layers.conv_bn_relu(x, channels, 3, f"{prefix}_1")
    x = layers.conv_bn_relu(x, channels, 3, f"{prefix}_2")
    return keras.layers.Conv2D(out_channels, 1, use_bias=out_channels != 1, name=f"{prefix}_out")(x)


def deconv_attention_head(x, layers: LayerFactory, reference, prefix="attn"):
    """Alternative attention head: transposed convs 6x6/2->512, 6x6/2->256, 6x6/2->64, 5x5/1->1.

    Each but the last is followed by BN and LeakyReLU; the output is resized to
    ``reference`` (the decoder features) so it lines up with the segmentation logits.
    """
    for i, (filters, kernel, stride) in enumerate(((512, 6, 2), (256, 6, 2), (64, 6, 2))):
        x = keras.layers.Conv2DTranspose(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            name=f"{prefix}_deconv{i + 1}",
        )(x)
        x = layers.bn(f"{prefix}_deconv{i + 1}_bn")(x)
        x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"{prefix}_deconv{i + 1}_lrelu")(x)
    x = keras.layers.Conv2DTranspose(1, 5, strides=1, padding="same", name=f"{prefix}_out")(x)
    return ResizeLike(name=f"{prefix}_resize")(x, reference)


def to_input_size(x, image, name):
    """A head output (stride 4) bilinearly resized to the image's size, as float32 (also under
    mixed precision), in a layer named ``name``."""
    x = ResizeLike(name=f"{name}_resize")(x, image)
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)


def attention_to_input_size(x, image):
    """The attention head's output ``[B, h, w, 1]`` -> the attention probability at the image's
    size ``[B, H, W, 1]`` float32: sigmoid first, at the head's resolution, then bilinear
    resize, in the reference's order (``network/mscale.py: MscaleV3Plus._fwd``,
    ``network/ocrnet.py: MscaleOCR._fwd``: the head ends in a Sigmoid and its output is
    upsampled), so converted reference weights give the reference's attention maps."""
    x = keras.layers.Activation("sigmoid", dtype="float32", name="attention_sigmoid")(x)
    return to_input_size(x, image, "attention")


def aux_head(features, layers: LayerFactory, num_classes, channels=256, prefix="aux"):
    """Auxiliary head on the trunk's final features: 1x1-BN-ReLU-1x1."""
    x = layers.conv_bn_relu(features, channels, 1, f"{prefix}_1")
    return keras.layers.Conv2D(num_classes, 1, name=f"{prefix}_out")(x)
