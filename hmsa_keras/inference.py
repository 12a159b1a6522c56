"""One inference entry point: a model and an RGB image in, NumPy results out.

:func:`segment_image` is what ``hmsa_keras.segment_image``, ``hmsa-predict``,
``hmsa-autolabel`` and ``hmsa-eval --tile_size`` use, with or without tiling; the keys of
its result are the same either way.

Tiling (``tile_size``) is for images too large to segment in one go. The image is cut into
overlapping tiles; every tile runs the FULL scale chain (``model.segment(tile, scales,
flip)``), and the fused logits (and, with details, every scale's logits and attention) of
the tiles are blended with per-pixel weights and normalised by the summed weights:

- ``gaussian`` (default): a separable bump, highest at the tile centre (sigma = tile / 4 per
  axis, floored at 1e-3 of the peak so every pixel keeps a weight); smooth seams for real
  models, whose predictions degrade towards tile borders.
- ``uniform``: plain averaging of the overlapping tiles.
- ``crop``: each tile contributes only its inner region (``overlap // 2`` from every inner
  tile edge; image borders are kept). For a model whose receptive field radius is at most
  ``overlap // 2`` (at every scale of the chain) and tile positions aligned with the
  network's stride (``align``), this reproduces whole-image inference up to float rounding.

When one tile covers the whole image (or ``tile_size`` is None) the result is the single
whole-image call, bit for bit.

Why tiling cannot be exact for the real HMSA network: its ASPP has an image-level pooling
branch (global context) and its receptive field at 0.5x spans hundreds of pixels, so a tile
sees different context than the whole image. Expect small differences near tile seams and,
through the pooled context, everywhere (docs/evaluation.md quotes the measured agreement).

Memory: the blended logits are accumulated for the whole image (``H * W * K * 4`` bytes,
plus the same per scale for the details).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np

from hmsa_keras import conventions

BLENDS = ("gaussian", "uniform", "crop")


# ----------------------------------------------------------------------------- input contract
def check_image(image, name: str = "image") -> np.ndarray:
    """The input contract of :func:`segment_image`: ONE RGB image, uint8 ``[H, W, 3]``, at
    least 1 pixel (the minimum size for a chain is checked separately:
    :func:`hmsa_keras.conventions.min_size_problem`).

    Nothing is converted, because every conversion of another dtype guesses a range: float
    images (in [0, 1] or in [0, 255]?), 16-bit arrays (full 16-bit range or 12-bit camera
    data?), greyscale or RGBA arrays, batches and file paths are refused with a message
    saying what to pass. Files are read with :func:`hmsa_keras.data.io.read_image`, whose
    rules (EXIF orientation, 16-bit grey ``v >> 8``) are documented in docs/data.md.

    Returns the image as a NumPy array. Raises ValueError naming ``name``.
    """
    expected = f"{name}: expected one RGB image [height, width, 3]"
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        raise ValueError(
            f"{expected}, got a path {image!r}; read the file first: "
            "hmsa_keras.data.io.read_image(path) (RGB uint8, EXIF orientation "
            "applied)"
        )
    image = np.asarray(image)
    shape = tuple(image.shape)
    if image.ndim == 4 and shape[-1] == 3:
        raise ValueError(
            f"{expected}, got a batch of shape {shape}; segment the images one by "
            "one, e.g. image[0]"
        )
    if image.ndim == 2 or (image.ndim == 3 and shape[-1] == 1):
        raise ValueError(
            f"{expected}, got a greyscale array of shape {shape}; repeat it to three "
            "channels: np.repeat(x.reshape(x.shape[0], x.shape[1], 1), 3, axis=-1)"
        )
    if image.ndim == 3 and shape[-1] == 4:
        raise ValueError(
            f"{expected}, got 4 channels {shape} (RGBA?); drop the alpha channel: x[..., :3]"
        )
    if image.ndim != 3 or shape[-1] != 3:
        raise ValueError(f"{expected}, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"{name}: expected dtype uint8 (RGB pixels 0..255), got {image.dtype}"
            f"{_value_range(image)}; {_conversion_hint(image.dtype)}"
        )
    if min(shape[:2]) < 1:
        raise ValueError(f"{name}: empty image of shape {shape}")
    return image


def _value_range(image) -> str:
    try:
        if image.size and np.issubdtype(image.dtype, np.number):
            return f" with values in [{image.min():g}, {image.max():g}]"
    except (TypeError, ValueError):
        pass
    return ""


def _conversion_hint(dtype) -> str:
    if np.issubdtype(dtype, np.floating):
        return (
            "convert it yourself, knowing its range: (x * 255).round().astype(np.uint8) for "
            "floats in [0, 1], x.round().clip(0, 255).astype(np.uint8) for floats in [0, 255]"
        )
    if np.issubdtype(dtype, np.integer):
        return (
            "for 16-bit pixels use (x >> 8).astype(np.uint8), the rule "
            "hmsa_keras.data.io.read_image applies to 16-bit files (or rescale 12-bit data "
            "yourself)"
        )
    return "convert it to uint8 RGB first"


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` -> float32 ``(pixel / 255 - MEAN) / STD`` (NumPy; the networks'
    input)."""
    mean = np.asarray(conventions.MEAN, np.float32)
    std = np.asarray(conventions.STD, np.float32)
    return (np.asarray(image, np.float32) / 255.0 - mean) / std


# ----------------------------------------------------------------------------- compiled calls
_COMPILED = weakref.WeakKeyDictionary()  # model -> {(scales, flip, details): callable}


def compiled_segment(model, scales, flip=False, return_details=False):
    """``model.segment`` for any image size, compiled once per argument set and model
    (TensorFlow: a ``tf.function``; eager multi-scale inference is ~100x slower). Takes a
    normalised float32 batch ``[B, H, W, 3]``; returns ``model.segment``'s dict."""
    import keras

    key = (conventions.parse_scales(scales), bool(flip), bool(return_details))
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:

        def call(images):
            return model.segment(images, key[0], key[1], return_details=key[2])

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            call = tf.function(
                call, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
            )
        per_model[key] = call
    return per_model[key]


def _numpy(x):
    import keras

    return keras.ops.convert_to_numpy(x)


# ----------------------------------------------------------------------------- tiling
def tile_starts(length: int, tile: int, overlap: int, align: int = 1):
    """Start offsets of tiles along one axis: every ``tile - overlap`` pixels (rounded
    down to a multiple of ``align``), the last tile flush with the end. ``tile >= length``
    gives one tile ``[0, length)``."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile size {tile}), got {overlap}")
    stride = (tile - overlap) // max(int(align), 1) * max(int(align), 1)
    if stride < 1:
        raise ValueError(
            f"tile {tile} with overlap {overlap} leaves no stride that is a multiple of "
            f"align={align}: lower the overlap or the alignment"
        )
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def window_1d(tile: int, start: int, length: int, overlap: int, blend: str) -> np.ndarray:
    """Blend weights along one axis for a tile at ``start`` in an axis of ``length``."""
    if blend == "uniform":
        return np.ones(tile, np.float32)
    if blend == "gaussian":
        x = np.arange(tile, dtype=np.float32) + 0.5 - tile / 2.0
        w = np.exp(-0.5 * (x / (tile / 4.0)) ** 2)
        return np.maximum(w / w.max(), 1e-3).astype(np.float32)
    if blend == "crop":
        w = np.ones(tile, np.float32)
        lo = 0 if start == 0 else overlap // 2
        hi = 0 if start + tile >= length else overlap - overlap // 2
        w[:lo] = 0.0
        if hi:
            w[tile - hi :] = 0.0
        return w
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def _run(model, batch, scales, flip, details):
    """One compiled call on a normalised batch -> NumPy (logits, {scale: logits},
    {scale: attention})."""
    out = compiled_segment(model, scales, flip, details)(batch)
    logits = _numpy(out["logits"])
    if not details:
        return logits, {}, {}
    return (
        logits,
        {s: _numpy(v) for s, v in out["scale_logits"].items()},
        {s: _numpy(a)[..., 0] for s, a in out["attention"].items()},
    )


def _segment_tiled(model, x, tile, overlap, scales, flip, blend, align, tile_batch, details):
    """Blended (logits, scale_logits, attention, num_tiles) of one normalised image ``x``
    [H, W, 3]."""
    h, w = x.shape[:2]
    th, tw = min(tile[0], h), min(tile[1], w)
    if th == h and tw == w:  # one tile: the whole-image call itself
        logits, scale_logits, attention = _run(model, x[None], scales, flip, details)
        return (
            logits[0],
            {s: v[0] for s, v in scale_logits.items()},
            {s: a[0] for s, a in attention.items()},
            1,
        )
    positions = [
        (y, x0)
        for y in tile_starts(h, th, overlap, align)
        for x0 in tile_starts(w, tw, overlap, align)
    ]
    acc = weight = None
    step = max(int(tile_batch), 1)
    for i in range(0, len(positions), step):
        group = positions[i : i + step]
        batch = np.stack([x[y : y + th, x0 : x0 + tw] for y, x0 in group])
        logits, scale_logits, attention = _run(model, batch, scales, flip, details)
        parts = {
            "logits": logits,
            **{("scale", s): v for s, v in scale_logits.items()},
            **{("attention", s): a[..., None] for s, a in attention.items()},
        }
        if acc is None:
            acc = {k: np.zeros((h, w, v.shape[-1]), np.float32) for k, v in parts.items()}
            weight = np.zeros((h, w, 1), np.float32)
        for j, (y, x0) in enumerate(group):
            wgt = np.outer(
                window_1d(th, y, h, overlap, blend), window_1d(tw, x0, w, overlap, blend)
            )[..., None]
            weight[y : y + th, x0 : x0 + tw] += wgt
            for k, v in parts.items():
                acc[k][y : y + th, x0 : x0 + tw] += v[j] * wgt
    if not (weight > 0).all():  # cannot happen with the windows above; guard anyway
        raise RuntimeError("tiling left pixels without any weight")
    out = {k: v / weight for k, v in acc.items()}
    scale_logits = {k[1]: v for k, v in out.items() if k[0] == "scale"}
    attention = {k[1]: v[..., 0] for k, v in out.items() if k[0] == "attention"}
    return out["logits"], scale_logits, attention, len(positions)


# ----------------------------------------------------------------------------- the entry point
def segment_image(
    model,
    image,
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    flip: bool = False,
    return_details: bool = False,
    tile_size=None,
    tile_overlap: int = 128,
    tile_blend: str = "gaussian",
    tile_align: int = 1,
    tile_batch: int = 1,
    name: str = "image",
) -> dict:
    """Segments one RGB image with any chain of scales, optionally tile by tile.

    Args:
      model: an :class:`hmsa_keras.HMSA` (anything with its ``segment`` method).
      image: uint8 ``[H, W, 3]`` RGB (see :func:`check_image`).
      scales: the inference chain, e.g. ``(0.5, 1.0, 2.0)`` (any positive, distinct scales;
        hierarchical fusion as in arXiv 2005.10821, reference
        ``network/mscale.py: nscale_forward``).
      flip: average with the fused logits of the mirrored image (flip-TTA).
      return_details: also return every scale's logits and attention.
      tile_size: ``None`` (whole image), ``(h, w)`` or ``"HxW"``: tiled inference.
      tile_overlap: pixels shared by neighbouring tiles; tile_blend: ``gaussian`` |
        ``uniform`` | ``crop`` (module docstring); tile_align: tile offsets are multiples of
        it where possible; tile_batch: tiles per model call.
      name: how error messages name the image (e.g. its file).
    Returns:
      NumPy arrays at the image's size: ``classes`` ``[H, W]`` int32, ``logits`` and
      ``probabilities`` (softmax) ``[H, W, K]`` float32, ``num_tiles``; with
      ``return_details`` also ``scale_logits`` ``{scale: [H, W, K]}`` and ``attention``
      ``{scale: [H, W]}`` (sigmoid, in [0, 1]).
    Raises:
      ValueError: a bad image (:func:`check_image`), chain, tile size, overlap or blend, or an
        image too small for the chain (:func:`hmsa_keras.conventions.min_size_problem`: refused,
        never padded), each message starting with ``name``.
    """
    image = check_image(image, name)
    scales = conventions.parse_scales(scales, "scales")
    conventions.check_min_size(image.shape[0], image.shape[1], scales, name=name)
    if tile_blend not in BLENDS:
        raise ValueError(f"tile_blend must be one of {BLENDS}, got {tile_blend!r}")
    tile = conventions.parse_hw(tile_size, "tile_size") or image.shape[:2]
    cut = [t for t, side in zip(tile, image.shape[:2]) if t < side]  # axes that are really tiled
    if cut and not 0 <= tile_overlap < min(cut):
        raise ValueError(
            f"tile_overlap must be in [0, {min(cut)}) for tiles of {tile[0]}x{tile[1]} on an "
            f"image of {image.shape[0]}x{image.shape[1]}, got {tile_overlap}"
        )
    if tile_size is not None:
        conventions.check_min_size(
            min(tile[0], image.shape[0]),
            min(tile[1], image.shape[1]),
            scales,
            name=f"{name}: tile of {tile[0]}x{tile[1]}",
        )
    logits, scale_logits, attention, num_tiles = _segment_tiled(
        model,
        normalize(image),
        tile,
        int(tile_overlap),
        scales,
        bool(flip),
        tile_blend,
        tile_align,
        tile_batch,
        bool(return_details),
    )
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    result = {
        "classes": logits.argmax(-1).astype(np.int32),
        "logits": logits,
        "probabilities": (shifted / shifted.sum(-1, keepdims=True)).astype(np.float32),
        "num_tiles": num_tiles,
    }
    if return_details:
        result["scale_logits"], result["attention"] = scale_logits, attention
    return result


def argmax_agreement(a, b, ignore=None) -> float:
    """Share of pixels where two class maps (or logits, argmax taken) agree."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 3:
        a = a.argmax(-1)
    if b.ndim == 3:
        b = b.argmax(-1)
    mask = np.ones(a.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    return float((a[mask] == b[mask]).mean())


__all__ = [
    "BLENDS",
    "argmax_agreement",
    "check_image",
    "compiled_segment",
    "normalize",
    "segment_image",
    "tile_starts",
    "window_1d",
]
