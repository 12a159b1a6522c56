"""Trunks (backbones) from ``keras.applications`` with real atrous convolution.

``build_trunk`` returns a functional ``keras.Model`` named ``trunk`` that maps a
normalised image (``(pixel / 255 - MEAN) / STD`` with :data:`hmsa_keras.conventions.MEAN`
and ``STD``) to
``[low_level, high_level]``: the stride-4 features for the DeepLabV3+ decoder
and the final features at the chosen output stride (8 or 16).

The output stride is made the DeepLab way: the stride of the first convolution of
the later stage(s) is removed and every following 3x3 convolution of that stage
gets a dilation rate multiplied by the removed stride, so the receptive field is
kept and pretrained weights (whose shapes do not change) transfer exactly. The
layer whose stride was removed keeps the previous rate (torchvision's
``replace_stride_with_dilation`` and TF-slim's convention). Dilated ``Conv2D`` layers become
:class:`~hmsa_keras.models.atrous_conv2d.AtrousConv2D` (same weights; fast gradients under
TensorFlow, plain ``Conv2D`` on other backends).
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np

from hmsa_keras.config import OUTPUT_STRIDES, TRUNKS
from hmsa_keras.conventions import MEAN, STD
from hmsa_keras.models.atrous_conv2d import AtrousConv2D

# name of the stride-4 feature layer and the final feature layer of each trunk
_TAPS = {
    "mobilenetv2": ("block_2_add", "block_16_project_BN"),
    "resnet50": ("conv2_block3_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv5_block3_out"),
}
# stages that can be dilated: (first block index, last block index) for MobileNetV2,
# stage number for ResNets; listed as (stride-8 -> 16 stage, stride-16 -> 32 stage)
_MOBILENET_STAGES = ((6, 12), (13, 16))
_RESNET_STAGES = (4, 5)


@keras.saving.register_keras_serializable(package="hmsa_keras")
class TrunkInputAdapter(keras.layers.Layer):
    """Maps ImageNet mean/std-normalised RGB to the range a keras.applications trunk expects.

    ``mode="tf"`` gives [-1, 1] (MobileNetV2), ``mode="caffe"`` gives BGR minus the
    Caffe channel means (ResNet), so ``imagenet`` or local pretrained weights see the
    input they were trained on.
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe"):
            raise ValueError(f"TrunkInputAdapter mode must be 'tf' or 'caffe', got {mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        rgb01 = x * np.asarray(STD, "float32") + np.asarray(MEAN, "float32")
        if self.mode == "tf":
            return rgb01 * 2.0 - 1.0
        bgr = keras.ops.flip(rgb01 * 255.0, axis=-1)
        return bgr - np.asarray([103.939, 116.779, 123.68], "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _application(trunk, alpha, weights):
    kwargs = dict(input_shape=(None, None, 3), include_top=False, weights=weights)
    if trunk == "mobilenetv2":
        return keras.applications.MobileNetV2(alpha=alpha, **kwargs)
    if trunk == "resnet50":
        return keras.applications.ResNet50(**kwargs)
    return keras.applications.ResNet101(**kwargs)


def _dilation_plan(trunk, output_stride):
    """Returns {layer_name_regex: (new_strides or None, dilation)} for the conversion."""
    plan = {}
    # stages to convert: output stride 16 converts the last stage, 8 the last two
    n_converted = {16: 1, 8: 2}[output_stride]
    stages = _MOBILENET_STAGES if trunk == "mobilenetv2" else _RESNET_STAGES
    stages = stages[len(stages) - n_converted :]
    rate = 1
    for stage in stages:
        prev_rate, rate = rate, rate * 2
        if trunk == "mobilenetv2":
            first, last = stage
            plan[rf"block_{first}_depthwise"] = ((1, 1), prev_rate)
            plan[rf"block_{first}_pad"] = (None, prev_rate)
            for b in range(first + 1, last + 1):
                plan[rf"block_{b}_depthwise"] = (None, rate)
        else:
            plan[rf"conv{stage}_block1_1_conv"] = ((1, 1), 1)
            plan[rf"conv{stage}_block1_0_conv"] = ((1, 1), 1)
            plan[rf"conv{stage}_block1_2_conv"] = (None, prev_rate)
            plan[rf"conv{stage}_block([2-9]|[1-9][0-9])_2_conv"] = (None, rate)
    return plan


def _converter(plan, bn_momentum, sync_bn):
    compiled = [(re.compile(k + "$"), v) for k, v in plan.items()]

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["momentum"] = bn_momentum
            config["synchronized"] = sync_bn
        for pattern, (strides, rate) in compiled:
            if not pattern.match(layer.name):
                continue
            if isinstance(layer, keras.layers.ZeroPadding2D):
                config["padding"] = ((rate, rate), (rate, rate))
            else:
                if strides is not None:
                    config["strides"] = strides
                config["dilation_rate"] = (rate, rate)
                if type(layer) is keras.layers.Conv2D and rate > 1:
                    return AtrousConv2D.from_config(config)  # same weights, faster backward
        return layer.__class__.from_config(config)

    return clone


def build_trunk(
    trunk: str = "mobilenetv2",
    alpha: float = 1.0,
    output_stride: int = 16,
    weights: str | None = None,
    bn_momentum: float = 0.9,
    sync_bn: bool = False,
) -> keras.Model:
    """Builds a dilated trunk: normalised image -> [stride-4 features, final features]."""
    if trunk not in TRUNKS:
        raise ValueError(f"Unknown trunk {trunk!r}; allowed: {', '.join(TRUNKS)}")
    if trunk == "hrnetv2_w48":  # its own builder, with the OCR head (models/ocr.py)
        raise ValueError("the hrnetv2_w48 trunk is built by hmsa_keras.models.hrnet.build_hrnet")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not alpha > 0:
        raise ValueError(f"alpha (MobileNetV2 width) must be > 0, got {alpha!r}")
    if weights in ("", "none", "None"):
        weights = None
    if weights is not None and weights != "imagenet":
        if not os.path.isfile(weights):
            raise ValueError(
                f"Trunk weights file {weights!r} does not exist; pass None, 'imagenet' "
                f"(downloads) or the path of a keras.applications {trunk} weights file"
            )
    try:
        base = _application(trunk, alpha, weights)
    except Exception as e:  # keras raises many types for a bad weights file
        if weights is None or weights == "imagenet":
            raise
        raise ValueError(
            f"Could not load trunk weights from {weights!r} into {trunk} (alpha={alpha}, "
            f"include_top=False): {e}"
        ) from e

    low_name, high_name = _TAPS[trunk]
    tapped = keras.Model(
        base.input, [base.get_layer(low_name).output, base.get_layer(high_name).output]
    )
    converted = keras.models.clone_model(
        tapped,
        clone_function=_converter(_dilation_plan(trunk, output_stride), bn_momentum, sync_bn),
    )
    converted.set_weights(tapped.get_weights())

    inputs = keras.Input((None, None, 3), name="image")
    x = TrunkInputAdapter("tf" if trunk == "mobilenetv2" else "caffe", name="input_adapter")(inputs)
    low, high = converted(x)
    return keras.Model(inputs, [low, high], name="trunk")
