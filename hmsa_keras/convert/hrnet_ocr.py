"""Name map between the reference's HRNet-OCR checkpoints and hmsa_keras' HRNet-OCR model.

Checkpoint kinds (keys after removing ``module.``):

- ``mscale``: ``ocrnet.HRNet_Mscale`` (``network/ocrnet.py: MscaleOCR``): ``backbone.*``
  (``network/hrnetv2.py: HighResolutionNet``), ``ocr.*`` (``OCR_block``) and
  ``scale_attn.*`` (``network/utils.py: make_attn_head``). E.g. the released
  ``cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth``.
- ``ocrnet``: ``ocrnet.HRNet`` (``OCRNet``): the same without ``scale_attn.*``; the
  attention head keeps its fresh initialisation (e.g. ``ocrnet.HRNet_industrious-chicken.pth``,
  the reference's Mapillary-pretrained starting point).
- ``imagenet``: the HRNetV2 ImageNet classifier (``hrnetv2_w48_imagenet_pretrained.pth``):
  trunk keys without ``backbone.``; renamed as the reference's loader does
  (``hrnetv2.py: init_weights``: ``last_layer`` -> ``aux_head``, ``model.`` removed); its
  classification head (``incre_modules``, ``downsamp_modules``, ``final_layer``,
  ``classifier``) is not used, as in the reference; the OCR and attention heads stay fresh.

Tensor layouts: convolution kernels OIHW -> HWIO (Keras ``Conv2D``), BatchNorm
``weight``/``bias``/``running_mean``/``running_var`` -> ``gamma``/``beta``/``moving_mean``/
``moving_variance``; ``num_batches_tracked`` is not needed (Keras BN uses a momentum).
"""

from __future__ import annotations

import re

import keras
import numpy as np

from hmsa_keras.convert.readers import CheckpointError

KINDS = ("mscale", "ocrnet", "imagenet")
IMAGENET_HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
BN_COUNTER = "num_batches_tracked"
MAX_LISTED = 12

# Keras trunk layer name -> reference module path (under backbone.); see models/hrnet.py
_TRUNK_RULES = [
    (re.compile(p), t)
    for p, t in (
        (r"^stem(\d)_(conv|bn)$", r"\2\1"),
        (r"^layer1_b(\d+)_(conv|bn)(\d)$", r"layer1.\1.\2\3"),
        (r"^layer1_b(\d+)_down_conv$", r"layer1.\1.downsample.0"),
        (r"^layer1_b(\d+)_down_bn$", r"layer1.\1.downsample.1"),
        (r"^transition(\d)_br(\d)_conv$", r"transition\1.\2.0"),
        (r"^transition(\d)_br(\d)_bn$", r"transition\1.\2.1"),
        (r"^transition(\d)_br(\d)_down(\d)_conv$", r"transition\1.\2.\3.0"),
        (r"^transition(\d)_br(\d)_down(\d)_bn$", r"transition\1.\2.\3.1"),
        (r"^stage(\d)_m(\d+)_br(\d)_b(\d+)_(conv|bn)(\d)$", r"stage\1.\2.branches.\3.\4.\5\6"),
        (r"^stage(\d)_m(\d+)_br(\d)_b(\d+)_down_conv$", r"stage\1.\2.branches.\3.\4.downsample.0"),
        (r"^stage(\d)_m(\d+)_br(\d)_b(\d+)_down_bn$", r"stage\1.\2.branches.\3.\4.downsample.1"),
        (r"^stage(\d)_m(\d+)_fuse(\d)_from(\d)_conv$", r"stage\1.\2.fuse_layers.\3.\4.0"),
        (r"^stage(\d)_m(\d+)_fuse(\d)_from(\d)_bn$", r"stage\1.\2.fuse_layers.\3.\4.1"),
        (
            r"^stage(\d)_m(\d+)_fuse(\d)_from(\d)_down(\d)_conv$",
            r"stage\1.\2.fuse_layers.\3.\4.\5.0",
        ),
        (r"^stage(\d)_m(\d+)_fuse(\d)_from(\d)_down(\d)_bn$", r"stage\1.\2.fuse_layers.\3.\4.\5.1"),
    )
]

_OBJECT_BLOCK = "ocr.ocr_distri_head.object_context_block"
# Keras head layer name -> reference module path; see models/ocr.py
HEAD_MODULES = {
    "ocr_conv3x3_conv": "ocr.conv3x3_ocr.0",
    "ocr_conv3x3_bn": "ocr.conv3x3_ocr.1.0",
    "aux_1_conv": "ocr.aux_head.0",
    "aux_1_bn": "ocr.aux_head.1.0",
    "aux_out": "ocr.aux_head.2",
    "ocr_pixel_1_conv": f"{_OBJECT_BLOCK}.f_pixel.0",
    "ocr_pixel_1_bn": f"{_OBJECT_BLOCK}.f_pixel.1.0",
    "ocr_pixel_2_conv": f"{_OBJECT_BLOCK}.f_pixel.2",
    "ocr_pixel_2_bn": f"{_OBJECT_BLOCK}.f_pixel.3.0",
    "ocr_object_1_conv": f"{_OBJECT_BLOCK}.f_object.0",
    "ocr_object_1_bn": f"{_OBJECT_BLOCK}.f_object.1.0",
    "ocr_object_2_conv": f"{_OBJECT_BLOCK}.f_object.2",
    "ocr_object_2_bn": f"{_OBJECT_BLOCK}.f_object.3.0",
    "ocr_down_conv": f"{_OBJECT_BLOCK}.f_down.0",
    "ocr_down_bn": f"{_OBJECT_BLOCK}.f_down.1.0",
    "ocr_up_conv": f"{_OBJECT_BLOCK}.f_up.0",
    "ocr_up_bn": f"{_OBJECT_BLOCK}.f_up.1.0",
    "ocr_fuse_conv": "ocr.ocr_distri_head.conv_bn_dropout.0",
    "ocr_fuse_bn": "ocr.ocr_distri_head.conv_bn_dropout.1.0",
    "ocr_cls": "ocr.cls_head",
    "attn_1_conv": "scale_attn.conv0",
    "attn_1_bn": "scale_attn.bn0",
    "attn_2_conv": "scale_attn.conv1",
    "attn_2_bn": "scale_attn.bn1",
    "attn_out": "scale_attn.conv2",
}
# keys that give the architecture's sizes: (option, key, axis)
_SIZE_KEYS = {
    "hrnet_width": ("backbone.transition1.0.0.weight", 0),
    "num_classes": ("ocr.cls_head.weight", 0),
    "ocr_mid_channels": ("ocr.conv3x3_ocr.0.weight", 0),
    "ocr_key_channels": (f"{_OBJECT_BLOCK}.f_pixel.0.weight", 0),
    "attention_channels": ("scale_attn.conv0.weight", 0),
}


def trunk_module(layer_name: str) -> str:
    """Reference module path (under ``backbone.``) of a Keras trunk layer.

    Raises:
      KeyError: the name follows none of the trunk's naming rules.
    """
    for pattern, template in _TRUNK_RULES:
        if pattern.match(layer_name):
            return pattern.sub(template, layer_name)
    raise KeyError(f"trunk layer {layer_name!r} has no reference counterpart")


def detect_kind(state) -> str:
    """``mscale``, ``ocrnet`` or ``imagenet`` (see module docstring) from the keys.

    Raises:
      CheckpointError: none of them (names what the keys look like).
    """
    if any(k.startswith("backbone.") for k in state):
        return "mscale" if any(k.startswith("scale_attn.") for k in state) else "ocrnet"
    renamed = {k.replace("model.", "") for k in state}  # as the reference's loader renames them
    if "conv1.weight" in renamed and any(k.startswith("stage4.") for k in renamed):
        return "imagenet"
    sample = ", ".join(sorted(state)[:5])
    raise CheckpointError(
        "not an HRNet-OCR checkpoint: expected keys 'backbone.*' (reference ocrnet.HRNet_Mscale "
        "or ocrnet.HRNet) or 'conv1.weight' + 'stage4.*' (HRNetV2 ImageNet weights); "
        f"first keys: {sample}"
    )


def imagenet_to_trunk(state):
    """ImageNet HRNet keys as the reference's loader renames them, under ``backbone.``;
    returns ``(trunk_state, unused_keys)`` (the ImageNet classification head)."""
    renamed = {
        k.replace("last_layer", "aux_head").replace("model.", ""): v for k, v in state.items()
    }
    unused = sorted(k for k in renamed if k.startswith(IMAGENET_HEAD_PREFIXES))
    trunk = {f"backbone.{k}": v for k, v in renamed.items() if k not in unused}
    return trunk, unused


def infer_options(state, kind) -> dict:
    """Model options read from tensor shapes: ``hrnet_width`` and, unless ``imagenet``,
    ``num_classes``, ``ocr_mid_channels``, ``ocr_key_channels``; ``attention_channels``
    for ``mscale``. ``state`` has ``backbone.`` keys (see :func:`imagenet_to_trunk`).

    Raises:
      CheckpointError: a key that gives a size is missing or not 4-D.
    """
    wanted = ["hrnet_width"]
    if kind != "imagenet":
        wanted += ["num_classes", "ocr_mid_channels", "ocr_key_channels"]
    if kind == "mscale":
        wanted.append("attention_channels")
    options = {}
    for option in wanted:
        key, axis = _SIZE_KEYS[option]
        value = state.get(key)
        if value is None or value.ndim != 4:
            got = "missing" if value is None else f"shape {list(value.shape)}"
            raise CheckpointError(
                f"cannot read {option}: tensor {key!r} is {got} (expected a "
                "4-D convolution kernel): not the reference's HRNetV2 + OCR?"
            )
        options[option] = int(value.shape[axis])
    return options


def _layer_entries(layer, module):
    """(reference key, Keras variable, transform) for the weights of one layer."""
    if isinstance(layer, keras.layers.Conv2D):
        entries = [(f"{module}.weight", layer.kernel, "oihw->hwio")]
        if layer.use_bias:
            entries.append((f"{module}.bias", layer.bias, None))
        return entries
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (f"{module}.weight", layer.gamma, None),
            (f"{module}.bias", layer.beta, None),
            (f"{module}.running_mean", layer.moving_mean, None),
            (f"{module}.running_var", layer.moving_variance, None),
        ]
    raise TypeError(
        f"layer {layer.name!r} ({type(layer).__name__}) has weights but no conversion rule"
    )


def name_map(network, kind="mscale"):
    """Every weight of ``network`` (an HRNet-OCR segmenter) the checkpoint ``kind`` fills:
    a list of ``(reference key, Keras variable, transform, Keras path)``.

    Raises:
      KeyError / TypeError: a layer of the network has no reference counterpart (a bug).
    """
    entries = []
    trunk = network.get_layer("trunk")
    for layer in trunk.layers:
        if layer.weights:
            module = "backbone." + trunk_module(layer.name)
            entries += [
                (k, v, t, f"trunk/{layer.name}") for k, v, t in _layer_entries(layer, module)
            ]
    if kind == "imagenet":
        return entries
    for layer in network.layers:
        if layer is trunk or not layer.weights:
            continue
        module = HEAD_MODULES.get(layer.name)
        if module is None:
            raise KeyError(f"head layer {layer.name!r} has no reference counterpart")
        if kind == "ocrnet" and module.startswith("scale_attn."):
            continue
        entries += [(k, v, t, layer.name) for k, v, t in _layer_entries(layer, module)]
    return entries


def _listed(items):
    items = list(items)
    more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check(state, entries, ignored=()):
    """Raises a :class:`CheckpointError` naming missing / unexpected keys and shape
    mismatches between ``state`` (reference layout) and ``entries`` (:func:`name_map`)."""
    expected = {key: _target_shape(var.shape, t) for key, var, t, _ in entries}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(
        k
        for k in state
        if k not in expected and k not in ignored and not k.endswith("." + BN_COUNTER)
    )
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(shape)}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
    if problems:
        raise CheckpointError("; ".join(problems))


def _target_shape(keras_shape, transform):
    """The reference (PyTorch) shape of a Keras variable."""
    shape = tuple(int(d) for d in keras_shape)
    if transform == "oihw->hwio":
        h, w, i, o = shape
        return (o, i, h, w)
    return shape


def assign(state, entries):
    """Copies every mapped tensor into the model; returns one report line per tensor."""
    lines = []
    for key, var, transform, path in entries:
        value = np.asarray(state[key])
        if transform == "oihw->hwio":
            value = value.transpose(2, 3, 1, 0)
        var.assign(value.astype(var.dtype))
        lines.append(f"{key} {list(state[key].shape)} -> {path}/{var.name} {list(var.shape)}")
    return lines
