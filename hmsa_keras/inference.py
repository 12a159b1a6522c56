"""Tiled (sliding-window) inference for images too large to segment in one go.

The image is cut into overlapping tiles of ``tile_size``; every tile runs the FULL
scale chain (``model.segment(tile, scales, flip)``), and the fused logits of the
tiles are blended with per-pixel weights and normalised by the summed weights:

- ``gaussian`` (default): a separable bump, highest at the tile centre (sigma =
  tile / 4 per axis, floored at 1e-3 of the peak so every pixel keeps a weight);
  smooth seams for real models, whose predictions degrade towards tile borders.
- ``uniform``: plain averaging of the overlapping tiles.
- ``crop``: each tile contributes only its inner region (``overlap // 2`` from
  every inner tile edge; image borders are kept). For a model whose receptive
  field radius is at most ``overlap // 2`` (at every scale of the chain) and tile
  positions aligned with the network's stride (``align``), this reproduces
  whole-image inference up to float rounding; the tests check exactly that.

When a tile covers the whole image (or ``tile_size`` is None) the result is the
single whole-image call, bit for bit.

Why tiling cannot be exact for the real HMSA network: its ASPP has an image-level
pooling branch (global context) and its receptive field at 0.5x spans hundreds of
pixels, so a tile sees different context than the whole image. Expect small
differences near tile seams and, through the pooled context, everywhere; measure
agreement with :func:`argmax_agreement` on images where whole-image inference fits.

Memory: the blended logits are accumulated for the whole image (``H * W * K * 4``
bytes, plus the same for attention maps with ``return_details``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

BLENDS = ("gaussian", "uniform", "crop")


def parse_tile_size(text) -> Optional[Tuple[int, int]]:
    """``"512x1024"`` (H x W), ``"512"`` (square) or a pair -> (h, w); empty/None -> None."""
    if text is None or text == "" or text == 0:
        return None
    if isinstance(text, str):
        parts = text.lower().replace("*", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"bad tile size {text!r}: use HxW, e.g. 512x1024, or one number for squares") from None
        if len(values) == 1:
            values = values * 2
    else:
        values = [int(v) for v in text]
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"bad tile size {text!r}: use HxW with positive integers, e.g. 512x1024")
    return tuple(values)


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
        raise ValueError(f"tile {tile} with overlap {overlap} leaves no stride that is a multiple of "
                         f"align={align}: lower the overlap or the alignment")
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
            w[tile - hi:] = 0.0
        return w
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def _as_batch(image):
    import tensorflow as tf

    image = tf.convert_to_tensor(image, tf.float32)
    if image.shape.rank == 3:
        image = image[None]
    if image.shape.rank != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
        raise ValueError(f"tiled inference takes one normalised image [H, W, 3] or [1, H, W, 3], got {image.shape}")
    return image


def segment_tiled(model, image, tile_size=None, overlap: int = 64, scales: Sequence[float] = (1.0,),
                  flip: bool = False, blend: str = "gaussian", align: int = 1, tile_batch: int = 1,
                  return_details: bool = False) -> dict:
    """Sliding-window inference on ONE normalised image (``[H, W, 3]`` or ``[1, H, W, 3]``).

    ``tile_size``: (h, w) (larger than the image along an axis -> one tile along it);
    ``overlap``: pixels shared by neighbouring tiles; ``align``: tile offsets are
    multiples of it where possible (use the network stride / smallest scale for the
    most consistent tiles); ``tile_batch``: tiles per model call.

    Returns numpy ``logits`` [H, W, K] (float32), ``classes`` [H, W] int32, ``num_tiles``
    and, with ``return_details``, ``attention`` {scale: [H, W]} blended like the logits.
    """
    import tensorflow as tf

    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    image = _as_batch(image)
    h, w = int(image.shape[1]), int(image.shape[2])
    th, tw = (h, w) if tile_size is None else parse_tile_size(tile_size)
    th, tw = min(th, h), min(tw, w)

    def run(batch):
        out = model.segment(batch, scales=scales, flip=flip, return_details=return_details)
        att = {s: a.numpy()[..., 0] for s, a in out["attention"].items()} if return_details else None
        return out["logits"].numpy(), att

    if th == h and tw == w:  # one tile: the whole-image call itself
        logits, att = run(image)
        result = {"logits": logits[0], "classes": np.argmax(logits[0], -1).astype(np.int32), "num_tiles": 1}
        if return_details:
            result["attention"] = {s: a[0] for s, a in att.items()}
        return result

    ys, xs = tile_starts(h, th, overlap, align), tile_starts(w, tw, overlap, align)
    positions = [(y, x) for y in ys for x in xs]
    logits_acc = weight_acc = att_acc = None
    for i in range(0, len(positions), max(int(tile_batch), 1)):
        group = positions[i:i + max(int(tile_batch), 1)]
        batch = tf.concat([image[:, y:y + th, x:x + tw] for y, x in group], axis=0)
        logits, att = run(batch)
        if logits_acc is None:
            logits_acc = np.zeros((h, w, logits.shape[-1]), np.float32)
            weight_acc = np.zeros((h, w, 1), np.float32)
            att_acc = {s: np.zeros((h, w), np.float32) for s in (att or {})}
        for j, (y, x) in enumerate(group):
            wgt = np.outer(window_1d(th, y, h, overlap, blend), window_1d(tw, x, w, overlap, blend))[..., None]
            logits_acc[y:y + th, x:x + tw] += logits[j] * wgt
            weight_acc[y:y + th, x:x + tw] += wgt
            for s in att_acc:
                att_acc[s][y:y + th, x:x + tw] += att[s][j] * wgt[..., 0]
    if not (weight_acc > 0).all():  # cannot happen with the windows above; guard anyway
        raise RuntimeError("tiling left pixels without any weight")
    logits = logits_acc / weight_acc
    result = {"logits": logits, "classes": np.argmax(logits, -1).astype(np.int32), "num_tiles": len(positions)}
    if return_details:
        result["attention"] = {s: a / weight_acc[..., 0] for s, a in att_acc.items()}
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


__all__ = ["BLENDS", "argmax_agreement", "parse_tile_size", "segment_tiled", "tile_starts", "window_1d"]
