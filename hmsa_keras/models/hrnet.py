"""HRNetV2 trunk (Wang et al. 2019, arXiv 1908.07919) as used by HMSA's flagship model.

``build_hrnet(width)`` returns a functional ``keras.Model`` named ``trunk`` mapping a
normalised image ``[B, H, W, 3]`` (ImageNet mean/std, see :mod:`hmsa_keras.conventions`)
to the stride-4 features ``[B, ceil(H/4), ceil(W/4), 15 * width]`` (720 channels for
W48), in the compute dtype of the layers.

Architecture (reference ``network/hrnetv2.py: HighResolutionNet`` with the
``config.py: MODEL.OCR_EXTRA`` defaults):

- stem: two 3x3 stride-2 convolutions to 64 channels, each with BN-ReLU;
- stage 1: 4 bottleneck blocks (64 -> 256 channels);
- stages 2, 3, 4: 1, 4 and 3 multi-resolution modules with 2, 3 and 4 branches of
  4 basic blocks; branch ``b`` has ``width * 2**b`` channels at stride ``4 * 2**b``.
  A transition before each stage adapts the existing branches (3x3 BN-ReLU where the
  channel count changes) and opens the new one from the lowest-resolution branch
  (3x3 stride-2 BN-ReLU). Each module ends with the fusion: output ``i`` sums all
  branches, lower resolutions through 1x1 BN then bilinear upsampling, higher ones
  through chains of 3x3 stride-2 convolutions (BN-ReLU between, BN at the end), then ReLU;
- head: the four branches bilinearly upsampled to stride 4 and concatenated.

Numerics follow PyTorch: strided convolutions pad one pixel on every side (explicit
``ZeroPadding2D`` + ``valid``, not Keras' asymmetric ``same``), upsampling is bilinear
with half-pixel centres (``align_corners=False``), BatchNorm epsilon 1e-5.

Layer names are stable (the checkpoint converter, :mod:`hmsa_keras.convert`, relies on
them): ``stem1_conv``, ``layer1_b0_conv1``, ``transition1_br1_down0_conv``,
``stage3_m2_br1_b3_conv1``, ``stage4_m0_fuse0_from2_conv``,
``stage4_m0_fuse3_from0_down1_conv``, ... (``_bn`` for the BatchNorms).
"""

from __future__ import annotations

import keras

from hmsa_keras.models.heads import LayerFactory, ResizeLike

STEM_CHANNELS = 64
# Stage 1: bottleneck blocks (expansion 4) on one branch of STEM_CHANNELS channels.
STAGE1_BLOCKS = 4
BOTTLENECK_EXPANSION = 4
# Stages 2-4: (number of modules, number of branches); every branch has 4 basic blocks.
STAGES = ((1, 2), (4, 3), (3, 4))
BLOCKS_PER_BRANCH = 4
TRUNK_WIDTHS = {"hrnetv2_w48": 48}


def hrnet_channels(width: int) -> int:
    """Channels of the trunk output: the sum over the 4 branches, 15 * width (720 for W48)."""
    return sum(width * 2**b for b in range(4))


class _Blocks:
    """Convolution/BN/ReLU helpers with one BatchNorm setting and PyTorch padding."""

    def __init__(self, layers: LayerFactory):
        self.layers = layers

    def conv(self, x, filters, kernel, name, stride=1):
        if stride == 1:
            padding = "same"  # symmetric for odd kernels at stride 1, as in PyTorch
        else:
            x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
            padding = "valid"
        return keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False, name=name
        )(x)

    def conv_bn(self, x, filters, kernel, name, stride=1, relu=True):
        x = self.conv(x, filters, kernel, f"{name}_conv", stride)
        x = self.layers.bn(f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def basic(self, x, channels, name):
        """3x3-BN-ReLU, 3x3-BN, + shortcut (1x1-BN when the channels change), ReLU."""
        y = self.conv(x, channels, 3, f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_relu1")(self.layers.bn(f"{name}_bn1")(y))
        y = self.layers.bn(f"{name}_bn2")(self.conv(y, channels, 3, f"{name}_conv2"))
        return self._residual(x, y, channels, name)

    def bottleneck(self, x, planes, name):
        """1x1-BN-ReLU, 3x3-BN-ReLU, 1x1 (4 * planes)-BN, + shortcut, ReLU."""
        y = x
        for i, (filters, kernel) in enumerate(((planes, 1), (planes, 3)), start=1):
            y = self.layers.bn(f"{name}_bn{i}")(self.conv(y, filters, kernel, f"{name}_conv{i}"))
            y = keras.layers.ReLU(name=f"{name}_relu{i}")(y)
        out = planes * BOTTLENECK_EXPANSION
        y = self.layers.bn(f"{name}_bn3")(self.conv(y, out, 1, f"{name}_conv3"))
        return self._residual(x, y, out, name)

    def _residual(self, x, y, channels, name):
        if x.shape[-1] != channels:
            x = self.conv_bn(x, channels, 1, f"{name}_down", relu=False)
        y = keras.layers.Add(name=f"{name}_add")([y, x])
        return keras.layers.ReLU(name=f"{name}_out")(y)


def _transition(blocks, inputs, channels, name):
    """Adapts the previous stage's branches to ``channels`` and opens the new branch(es)."""
    outputs = []
    for i, ch in enumerate(channels):
        if i < len(inputs):
            x = inputs[i]
            if x.shape[-1] != ch:
                x = blocks.conv_bn(x, ch, 3, f"{name}_br{i}")
        else:  # a new, lower-resolution branch from the lowest existing one
            x = inputs[-1]
            for k in range(i + 1 - len(inputs)):
                out = ch if k == i - len(inputs) else x.shape[-1]
                x = blocks.conv_bn(x, out, 3, f"{name}_br{i}_down{k}", stride=2)
        outputs.append(x)
    return outputs


def _module(blocks, inputs, channels, name):
    """One multi-resolution module: parallel branches of basic blocks, then the fusion."""
    branches = []
    for b, (x, ch) in enumerate(zip(inputs, channels)):
        for k in range(BLOCKS_PER_BRANCH):
            x = blocks.basic(x, ch, f"{name}_br{b}_b{k}")
        branches.append(x)
    if len(branches) == 1:
        return branches
    fused = []
    for i, ch in enumerate(channels):
        terms = []
        for j, x in enumerate(branches):
            prefix = f"{name}_fuse{i}_from{j}"
            if j == i:
                terms.append(x)
            elif j > i:  # lower resolution: 1x1-BN, then bilinear up to branch i's size
                x = blocks.conv_bn(x, ch, 1, prefix, relu=False)
                terms.append(ResizeLike(name=f"{prefix}_up")(x, branches[i]))
            else:  # higher resolution: (i - j) stride-2 3x3 convolutions
                for k in range(i - j):
                    last = k == i - j - 1
                    x = blocks.conv_bn(
                        x,
                        ch if last else x.shape[-1],
                        3,
                        f"{prefix}_down{k}",
                        stride=2,
                        relu=not last,
                    )
                terms.append(x)
        y = keras.layers.Add(name=f"{name}_fuse{i}_sum")(terms)
        fused.append(keras.layers.ReLU(name=f"{name}_fuse{i}_relu")(y))
    return fused


def build_hrnet(
    width: int = 48, bn_momentum: float = 0.9, sync_bn: bool = False, name: str = "trunk"
) -> keras.Model:
    """HRNetV2 trunk (see module docstring).

    Args:
      width: channels of the highest-resolution branch (48 for HRNetV2-W48); the
        branches have ``width * (1, 2, 4, 8)`` channels.
      bn_momentum: Keras BatchNorm momentum (PyTorch's 0.1 is Keras' 0.9).
      sync_bn: synchronised BatchNorm across replicas.
    Returns:
      a functional model ``[B, H, W, 3] -> [B, ceil(H/4), ceil(W/4), 15 * width]``.
    Raises:
      ValueError: ``width`` is not a positive int.
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"hrnet_width must be a positive int (48 for HRNetV2-W48), got {width!r}")
    blocks = _Blocks(LayerFactory(bn_momentum=bn_momentum, sync_bn=sync_bn))
    image = keras.Input((None, None, 3), name=f"{name}_image")
    x = blocks.conv_bn(image, STEM_CHANNELS, 3, "stem1", stride=2)
    x = blocks.conv_bn(x, STEM_CHANNELS, 3, "stem2", stride=2)
    for k in range(STAGE1_BLOCKS):
        x = blocks.bottleneck(x, STEM_CHANNELS, f"layer1_b{k}")
    branches = [x]
    for stage, (modules, num_branches) in enumerate(STAGES, start=2):
        channels = [width * 2**b for b in range(num_branches)]
        branches = _transition(blocks, branches, channels, f"transition{stage - 1}")
        for m in range(modules):
            branches = _module(blocks, branches, channels, f"stage{stage}_m{m}")
    upsampled = [branches[0]] + [
        ResizeLike(name=f"head_up{b}")(x, branches[0]) for b, x in enumerate(branches[1:], start=1)
    ]
    features = keras.layers.Concatenate(name="head_concat")(upsampled)
    return keras.Model(image, features, name=name)
