"""Object-contextual representations (OCR, Yuan et al. 2020, arXiv 1909.11065) on HRNetV2,
with HMSA's attention head: the paper's flagship single-scale network (arXiv 2005.10821 s4).

``build_ocr_segmenter`` wires ``image -> HRNetV2 trunk (stride 4, 15 * width channels)
-> OCR head -> {logits, attention, aux_logits}`` following the reference
``network/ocrnet.py: OCR_block`` and ``MscaleOCR._fwd``, ``network/ocr_utils.py`` and
``network/utils.py: make_attn_head``:

1. ``feats``: 3x3 conv (with bias) to ``mid`` channels, BN-ReLU (``ocr_conv3x3_*``).
2. soft object regions (the auxiliary head, ``aux_*``): 1x1 conv (with bias) keeping the
   trunk's channels, BN-ReLU, 1x1 conv (with bias) to ``K`` classes.
3. spatial gather (:class:`SpatialGather`): per class, a softmax over all pixels of the
   soft object regions weights the average of ``feats``: ``K`` class centres.
4. object attention (``ocr_pixel_*``, ``ocr_object_*``, ``ocr_down_*``, ``ocr_up_*``,
   :class:`ObjectAttention`): queries from the pixels (two 1x1 BN-ReLU to ``key``
   channels), keys from the centres (the same), values from the centres (one 1x1
   BN-ReLU); ``softmax(q k^T / sqrt(key))`` over the classes weights the values; a 1x1
   BN-ReLU brings the context back to ``mid`` channels.
5. ``[context, feats]`` concatenated, 1x1 conv to ``mid``, BN-ReLU, channel dropout
   (``ocr_fuse_*``): the OCR features, read by the classifier (``ocr_cls``, 1x1 with bias)
   and by the attention head (``attn_*``: 3x3 BN-ReLU, 3x3 BN-ReLU, 1x1 without bias).

Logits, auxiliary logits and the attention are computed at stride 4 and bilinearly
upsampled (half-pixel centres) to the input size, as float32; the attention's sigmoid is
applied before the upsampling, as the reference's head ends in its Sigmoid
(``network/ocrnet.py: MscaleOCR._fwd``).
"""

from __future__ import annotations

import keras
from keras import ops

from hmsa_keras.models.heads import LayerFactory, attention_to_input_size, conv_head, to_input_size
from hmsa_keras.models.hrnet import TRUNK_WIDTHS, build_hrnet


@keras.saving.register_keras_serializable(package="hmsa_keras")
class SpatialGather(keras.layers.Layer):
    """Class centres from soft object regions (reference ``ocr_utils.SpatialGather_Module``).

    ``call(features, region_logits)``: ``features`` ``[B, H, W, C]``, ``region_logits``
    ``[B, H, W, K]`` -> ``[B, K, 1, C]``, where centre ``k`` is the average of the
    features weighted by ``softmax`` over the ``H * W`` pixels of ``region_logits[..., k]``.
    The softmax runs in float32 (also under mixed precision).
    """

    def call(self, features, region_logits):
        logits = ops.cast(region_logits, "float32")
        logits = logits - ops.max(logits, axis=(1, 2), keepdims=True)
        weights = ops.exp(logits)
        weights = weights / ops.sum(weights, axis=(1, 2), keepdims=True)
        centres = ops.einsum("bhwk,bhwc->bkc", ops.cast(weights, features.dtype), features)
        return ops.expand_dims(centres, 2)

    def compute_output_shape(self, features_shape, region_logits_shape):
        return (features_shape[0], region_logits_shape[3], 1, features_shape[3])


@keras.saving.register_keras_serializable(package="hmsa_keras")
class ObjectAttention(keras.layers.Layer):
    """Pixel-to-object attention (reference ``ocr_utils.ObjectAttentionBlock``, scale 1).

    ``call(query, key, value)``: ``query`` ``[B, H, W, D]`` (per pixel), ``key`` and
    ``value`` ``[B, K, 1, D]`` (per class centre) -> ``[B, H, W, D]``:
    ``softmax_k(query . key_k / sqrt(D)) @ value``.
    """

    def call(self, query, key, value):
        key, value = ops.squeeze(key, 2), ops.squeeze(value, 2)
        scale = float(query.shape[-1]) ** -0.5
        similarity = ops.einsum("bhwd,bkd->bhwk", query, key) * ops.cast(scale, query.dtype)
        weights = ops.softmax(ops.cast(similarity, "float32"), axis=-1)
        return ops.einsum("bhwk,bkd->bhwd", ops.cast(weights, value.dtype), value)

    def compute_output_shape(self, query_shape, key_shape, value_shape):
        return tuple(query_shape[:3]) + (value_shape[3],)


def _conv(x, filters, kernel, name, use_bias=False):
    return keras.layers.Conv2D(filters, kernel, padding="same", use_bias=use_bias, name=name)(x)


def _bn_relu(x, layers, name):
    return keras.layers.ReLU(name=f"{name}_relu")(layers.bn(f"{name}_bn")(x))


def ocr_head(
    features, layers: LayerFactory, num_classes, mid_channels=512, key_channels=256, dropout=0.05
):
    """The OCR head on the trunk's ``features`` ``[B, h, w, C]`` (see module docstring).

    Returns ``(logits, aux_logits, ocr_features)`` at the size of ``features``:
    ``[B, h, w, K]``, ``[B, h, w, K]`` and ``[B, h, w, mid_channels]``.
    """
    feats = _bn_relu(
        _conv(features, mid_channels, 3, "ocr_conv3x3_conv", use_bias=True), layers, "ocr_conv3x3"
    )
    aux = _bn_relu(
        _conv(features, features.shape[-1], 1, "aux_1_conv", use_bias=True), layers, "aux_1"
    )
    aux_logits = _conv(aux, num_classes, 1, "aux_out", use_bias=True)

    centres = SpatialGather(name="ocr_gather")(feats, aux_logits)

    def key_transform(x, prefix):  # two 1x1-BN-ReLU to the key channels
        for i in (1, 2):
            x = _bn_relu(_conv(x, key_channels, 1, f"{prefix}_{i}_conv"), layers, f"{prefix}_{i}")
        return x

    query = key_transform(feats, "ocr_pixel")
    key = key_transform(centres, "ocr_object")
    value = _bn_relu(_conv(centres, key_channels, 1, "ocr_down_conv"), layers, "ocr_down")
    context = ObjectAttention(name="ocr_attention")(query, key, value)
    context = _bn_relu(_conv(context, mid_channels, 1, "ocr_up_conv"), layers, "ocr_up")

    x = keras.layers.Concatenate(name="ocr_concat")([context, feats])
    x = _bn_relu(_conv(x, mid_channels, 1, "ocr_fuse_conv"), layers, "ocr_fuse")
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name="ocr_fuse_dropout")(x)
    logits = _conv(x, num_classes, 1, "ocr_cls", use_bias=True)
    return logits, aux_logits, x


def build_ocr_segmenter(
    num_classes: int,
    trunk: str = "hrnetv2_w48",
    hrnet_width: int = 48,
    bn_momentum: float = 0.9,
    sync_bn: bool = False,
    ocr_mid_channels: int = 512,
    ocr_key_channels: int = 256,
    ocr_dropout: float = 0.05,
    attention_channels: int = 256,
) -> keras.Model:
    """HRNetV2 + OCR + attention head: the single-scale network HMSA runs at every scale.

    Args:
      num_classes: number of classes ``K``.
      trunk: ``"hrnetv2_w48"`` (the only trunk with this head).
      hrnet_width: channels of HRNetV2's highest-resolution branch (48 for W48; small
        values give tiny models for tests).
      bn_momentum: Keras BatchNorm momentum of every layer (reference: PyTorch 0.1).
      sync_bn: synchronised BatchNorm across replicas.
      ocr_mid_channels, ocr_key_channels, ocr_dropout: the reference's
        ``MODEL.OCR.MID_CHANNELS`` (512), ``MODEL.OCR.KEY_CHANNELS`` (256) and the
        ``Dropout2d`` rate of ``SpatialOCR_Module`` (0.05).
      attention_channels: channels of the attention head (``MODEL.SEGATTN_BOT_CH``, 256).
    Returns:
      a functional ``keras.Model`` named ``segmenter``: image ``[B, H, W, 3]`` (normalised
      float32) -> ``{"logits": [B, H, W, K], "attention": [B, H, W, 1]`` (sigmoid, in [0, 1]),
      ``"aux_logits": [B, H, W, K]}``, float32. The trunk is a sub-model named ``trunk``.
    Raises:
      ValueError: unknown trunk, or a non-positive size.
    """
    if trunk not in TRUNK_WIDTHS:
        raise ValueError(f"the OCR head runs on {sorted(TRUNK_WIDTHS)}, got trunk={trunk!r}")
    for name, value in (
        ("num_classes", num_classes),
        ("ocr_mid_channels", ocr_mid_channels),
        ("ocr_key_channels", ocr_key_channels),
        ("attention_channels", attention_channels),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= ocr_dropout < 1.0:
        raise ValueError(f"ocr_dropout must be in [0, 1), got {ocr_dropout!r}")
    layers = LayerFactory(bn_momentum=bn_momentum, sync_bn=sync_bn)
    image = keras.Input((None, None, 3), name="image")
    features = build_hrnet(hrnet_width, bn_momentum, sync_bn, name="trunk")(image)
    logits, aux_logits, ocr_features = ocr_head(
        features, layers, num_classes, ocr_mid_channels, ocr_key_channels, ocr_dropout
    )
    attention = conv_head(ocr_features, layers, 1, "attn", attention_channels)
    outputs = {
        "logits": to_input_size(logits, image, "logits"),
        "attention": attention_to_input_size(attention, image),
        "aux_logits": to_input_size(aux_logits, image, "aux_logits"),
    }
    return keras.Model(image, outputs, name="segmenter")
