"""The single-scale network that HMSA runs at every scale.

``build_segmenter`` wires trunk -> ASPP -> DeepLabV3+ decoder, and feeds the
decoder features (304 channels) to both the segmentation head and the attention
head. Outputs, all float32 (also under mixed precision) and bilinearly resized
from stride 4 to the size of the input image:

- ``logits``: ``[B, H, W, num_classes]``
- ``attention_logits``: ``[B, H, W, 1]``, pre-sigmoid attention (the fusion applies
  the sigmoid; the explicit baseline uses it as a softmax score)
- ``aux_logits``: ``[B, H, W, num_classes]``, only with ``aux_head=True``
"""

from __future__ import annotations

import keras

from hmsa_keras.config import ATTENTION_HEADS
from hmsa_keras.models import heads
from hmsa_keras.models.trunks import build_trunk


def _to_input_size(x, image, name):
    x = heads.ResizeLike(name=f"{name}_resize")(x, image)
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)


def build_segmenter(
    num_classes: int,
    trunk: str = "mobilenetv2",
    alpha: float = 1.0,
    output_stride: int = 16,
    weights: str | None = None,
    bn_momentum: float = 0.9,
    sync_bn: bool = False,
    aspp_channels: int = 256,
    decoder_channels: int = 256,
    low_level_channels: int = 48,
    attention_head: str = "conv",
    attention_channels: int = 256,
    aux_head: bool = False,
    dropout: float = 0.0,
) -> keras.Model:
    """Builds the functional single-scale network (see module docstring)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if attention_head not in ATTENTION_HEADS:
        raise ValueError(f"attention_head must be one of {ATTENTION_HEADS}, got {attention_head!r}")
    layers = heads.LayerFactory(bn_momentum=bn_momentum, sync_bn=sync_bn)
    image = keras.Input((None, None, 3), name="image")
    trunk_model = build_trunk(trunk, alpha, output_stride, weights, bn_momentum, sync_bn)
    low_level, features = trunk_model(image)

    x = heads.aspp(features, layers, output_stride, aspp_channels, dropout)
    decoded = heads.decoder(x, low_level, layers, low_level_channels)

    outputs = {"logits": _to_input_size(
        heads.conv_head(decoded, layers, num_classes, "seg", decoder_channels), image, "logits")}
    if attention_head == "conv":
        attn = heads.conv_head(decoded, layers, 1, "attn", attention_channels)
    else:
        attn = heads.deconv_attention_head(features, layers, decoded)
    outputs["attention_logits"] = _to_input_size(attn, image, "attention_logits")
    if aux_head:
        outputs["aux_logits"] = _to_input_size(
            heads.aux_head(features, layers, num_classes), image, "aux_logits")
    return keras.Model(image, outputs, name="segmenter")
