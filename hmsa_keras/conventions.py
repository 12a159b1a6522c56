"""Conventions shared by every part of hmsa_keras, each defined once.

Pure Python and NumPy (no TensorFlow, no Keras), so that the model code, the data
pipeline, the command-line tools and the TensorFlow-free LiteRT runner can all import it.

- ``IGNORE_LABEL``: the training id of pixels that take no part in losses and metrics
  (255, the Cityscapes convention of the reference, ``datasets/cityscapes_labels.py``).
- ``MEAN`` / ``STD``: ImageNet RGB channel statistics; images reach the networks as
  ``(pixel / 255 - MEAN) / STD`` (reference ``datasets/__init__.py``, ``mean_std``).
- Scale chains: :func:`parse_scales` (one rule everywhere: finite, > 0, distinct, sorted
  ascending), :func:`parse_sweep`, :func:`chain_name`, :func:`chain_tag`.
- Sizes: :func:`parse_hw` for ``HxW`` strings (``512x1024``, ``512,1024`` or ``512``).
- The minimum input size: :data:`MIN_SIDE`, :func:`min_size_problem`, :func:`check_min_size`,
  :func:`min_input_side` (the smallest side a chain accepts), :func:`scaled_side`.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

IGNORE_LABEL = 255
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The smallest image side (pixels) that every trunk handles at every scale of a chain: an
# image is resized by each scale s to floor(side * s), and each resized side must be at
# least MIN_SIDE (a stride-16/32 trunk needs a few pixels at its last stage).
MIN_SIDE = 16

Chain = Tuple[float, ...]


def parse_scales(value: Union[str, Sequence[float]], what: str = "scales") -> Chain:
    """A scale chain as a sorted tuple of distinct, finite floats > 0.

    Args:
      value: ``"0.5,1.0,2.0"`` or a sequence of numbers.
      what: the name used in error messages (e.g. ``"--scales"``).
    Returns:
      the scales sorted ascending, e.g. ``(0.5, 1.0, 2.0)``.
    Raises:
      ValueError: empty, not numbers, not finite or not > 0, or repeated values; the
        message names ``what`` and gives an example of a valid chain.
    """
    example = "give comma-separated positive numbers, e.g. 0.5,1.0,2.0"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    else:
        try:
            parts = list(value)
        except TypeError:
            raise ValueError(f"{what}: expected a scale chain, got {value!r}; {example}") from None
    if not parts:
        raise ValueError(f"{what}: empty scale chain {value!r}; {example}")
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: bad scale chain {value!r}; {example}") from None
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"{what}: every scale must be a finite number > 0, got {value!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what}: scales must be distinct, got {value!r}")
    return tuple(sorted(values))


def parse_sweep(text: str, what: str = "--sweep") -> List[Chain]:
    """``"1.0;0.5,1.0;0.5,1.0,2.0"`` -> a list of chains (semicolon-separated, each
    parsed by :func:`parse_scales`). Raises ValueError for an empty sweep or a repeated chain."""
    chains = [parse_scales(part, what) for part in text.split(";") if part.strip()]
    if not chains:
        raise ValueError(
            f"{what}: empty sweep {text!r}; give chains separated by ';', e.g. \"1.0;0.5,1.0\""
        )
    if len(set(chains)) != len(chains):
        raise ValueError(f"{what}: the sweep lists a chain twice: {text!r}")
    return chains


def chain_name(scales: Sequence[float], flip: bool = False) -> str:
    """Human-readable label of a chain, e.g. ``0.5,1,2+flip``."""
    return ",".join(f"{float(s):g}" for s in scales) + ("+flip" if flip else "")


def chain_tag(scales: Sequence[float], flip: bool = False) -> str:
    """File-name-safe label of a chain, e.g. ``s0.5-1-2_flip``."""
    return "s" + "-".join(f"{float(s):g}" for s in scales) + ("_flip" if flip else "")


def parse_hw(
    value: Union[str, Sequence[int], None], what: str = "size"
) -> Optional[Tuple[int, int]]:
    """``"512x1024"``, ``"512,1024"``, ``"512"`` (square) or ``(512, 1024)`` -> ``(512, 1024)``.

    ``None``, ``""``, ``"0"`` and ``"none"`` give ``None`` (no size). Raises ValueError
    naming ``what`` for anything else that is not one or two integers >= 1.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "0", "none"):
            return None
        parts = text.replace(",", "x").split("x")
    else:
        parts = list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 2) or any(n != int(n) or n < 1 for n in numbers):
        raise ValueError(
            f"{what}: expected HxW such as 512x1024 (or one number for a square), got {value!r}"
        )
    h, w = (int(numbers[0]), int(numbers[-1]))
    return h, w


def scaled_side(side: int, scale: float) -> int:
    """An image side resized by ``scale`` as the models resize it: ``floor(side * scale)`` in
    float32 arithmetic (``hmsa_keras.models.fusion.scaled_size``; float32 so that the Keras
    model, the SavedModel and TFLite agree), at least 1."""
    return max(int(np.floor(np.float32(side) * np.float32(scale))), 1)


def min_input_side(scales: Sequence[float]) -> int:
    """The smallest image side (pixels) that is at least :data:`MIN_SIDE` at every scale of
    ``scales`` (:func:`scaled_side`), e.g. 16 for ``(1.0,)``, 32 for ``(0.5, 1.0, 2.0)``, 64
    with 0.25 in the chain."""
    smallest = min(float(s) for s in scales)
    side = max(int(math.ceil(MIN_SIDE / smallest)) - 1, 1)
    while scaled_side(side, smallest) < MIN_SIDE:
        side += 1
    return side


def min_size_problem(height: int, width: int, scales: Sequence[float]) -> Optional[str]:
    """``None`` if an image of ``height`` x ``width`` pixels is at least :data:`MIN_SIDE`
    pixels per side at every scale of ``scales`` (sizes :func:`scaled_side`, as the models
    resize), else a one-line explanation naming the size, the smallest scale that is too small
    and the size needed.

    The rule for every entry point (Python API, hmsa-predict, hmsa-eval, SavedModel, TFLite,
    LiteRT runner): images below it are refused, never padded (docs/data.md, "Input contract").
    """
    for s in sorted(scales):
        h, w = scaled_side(height, s), scaled_side(width, s)
        if min(h, w) < MIN_SIDE:
            need = min_input_side([s])
            return (
                f"image of {height}x{width} (HxW) is {h}x{w} at scale {s:g}: every side must be at "
                f"least {MIN_SIDE} pixels at every scale of the chain, i.e. at least {need} pixels "
                f"at scale {s:g}; use a larger image or drop scale {s:g}"
            )
    return None


def check_min_size(height: int, width: int, scales: Sequence[float], name: str = "image") -> None:
    """Raises ValueError (starting with ``name``) when :func:`min_size_problem` finds one."""
    problem = min_size_problem(height, width, scales)
    if problem:
        raise ValueError(f"{name}: {problem}")


__all__ = [
    "Chain",
    "IGNORE_LABEL",
    "MEAN",
    "MIN_SIDE",
    "STD",
    "chain_name",
    "chain_tag",
    "check_min_size",
    "min_input_side",
    "min_size_problem",
    "parse_hw",
    "parse_scales",
    "parse_sweep",
    "scaled_side",
]
