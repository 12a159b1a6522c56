"""The single-scale network that HMSA runs at every scale.

``build_segmenter`` wires trunk -> ASPP -> DeepLabV3+ decoder, and feeds the
decoder features (304 channels) to both the segmentation head and the attention
head. Outputs, all float32 (also under mixed precision) and bilinearly resized
from stride 4 to the size of the input image:

- ``logits``: ``[B, H, W, num_classes]``
- ``attention``: ``[B, H, W, 1]`` in [0, 1], the attention probability (sigmoid at the
  head's resolution, then resized: the reference's order, ``network/mscale.py``)
- ``aux_logits``: ``[B, H, W, num_classes]``, only with ``aux_head=True``
"""

from __future__ import annotations

import keras

from hmsa_keras.config import ATTENTION_HEADS, HEADS
from hmsa_keras.models import heads
from hmsa_keras.models.trunks import build_trunk


def resolve_head(trunk, head=None):
    """The head a trunk gets: ``head`` if given, else ocr for HRNet, deeplabv3plus otherwise."""
    if head is not None and head not in HEADS:
        raise ValueError(f"head must be one of {HEADS} (or None for the trunk's own), got {head!r}")
    resolved = head or ("ocr" if trunk == "hrnetv2_w48" else "deeplabv3plus")
    if (resolved == "ocr") != (trunk == "hrnetv2_w48"):
        raise ValueError(
            f"head {resolved!r} does not run on trunk {trunk!r}: the OCR head runs on "
            "hrnetv2_w48, DeepLabV3+ on mobilenetv2/resnet50/resnet101"
        )
    return resolved


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
    hrnet_width: int = 48,
    head: str | None = None,
    ocr_mid_channels: int = 512,
    ocr_key_channels: int = 256,
    ocr_dropout: float = 0.05,
) -> keras.Model:
    """Builds the functional single-scale network (see module docstring).

    ``head="ocr"`` (the default for ``trunk="hrnetv2_w48"``) builds HRNetV2 + OCR instead
    (:func:`hmsa_keras.models.ocr.build_ocr_segmenter`, same outputs, always with aux).
    """
    if resolve_head(trunk, head) == "ocr":
        from hmsa_keras.models.ocr import build_ocr_segmenter

        return build_ocr_segmenter(
            num_classes,
            trunk,
            hrnet_width=hrnet_width,
            bn_momentum=bn_momentum,
            sync_bn=sync_bn,
            ocr_mid_channels=ocr_mid_channels,
            ocr_key_channels=ocr_key_channels,
            ocr_dropout=ocr_dropout,
            attention_channels=attention_channels,
        )
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

    outputs = {
        "logits": heads.to_input_size(
            heads.conv_head(decoded, layers, num_classes, "seg", decoder_channels), image, "logits"
        )
    }
    if attention_head == "conv":
        attn = heads.conv_head(decoded, layers, 1, "attn", attention_channels)
    else:
        attn = heads.deconv_attention_head(features, layers, decoded)
    outputs["attention"] = heads.attention_to_input_size(attn, image)
    if aux_head:
        outputs["aux_logits"] = heads.to_input_size(
            heads.aux_head(features, layers, num_classes), image, "aux_logits"
        )
    return keras.Model(image, outputs, name="segmenter")
