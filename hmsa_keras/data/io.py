"""Reading image/label files and checking them, with errors that name the file.

All file datasets share these helpers: the tf.data pipeline calls
:func:`load_image_label` through ``tf.numpy_function`` (so a bad file stops
training with a :class:`DataError` message naming it), ``hmsa-data check`` calls
:func:`check_pair` on every pair, and the evaluator can call
:func:`load_image_label` directly.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from hmsa_keras.data.labels import IGNORE, INVALID, DatasetInfo

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A dataset problem: missing/corrupt files, mismatched sizes, bad label ids, empty split."""


def format_problems(title: str, problems: Sequence[str], limit: int = 20) -> str:
    """One readable message for a list of problems (the first ``limit`` listed)."""
    lines = [f"{title}: {len(problems)} problem(s)"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (run `hmsa-data check` for the full list)")
    return "\n".join(lines)


def _open(path: str, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file does not exist")
    try:
        return Image.open(path)
    except Exception as exc:  # PIL raises several types for bad headers
        raise DataError(f"{path}: {what} file is not a readable image ({exc.__class__.__name__}: {exc})") from None


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]; grey/palette/RGBA are converted. Raises DataError."""
    with _open(path, "image") as img:
        try:
            img.load()
            arr = np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise DataError(f"{path}: image file is corrupt ({exc.__class__.__name__}: {exc})") from None
    return arr


def read_label_raw(path: str) -> np.ndarray:
    """Raw label values [H, W] (uint8, or int32 for 16/32-bit files). Raises DataError.

    Palette ("P") PNGs give their palette indices (Mapillary), grey PNGs their values.
    """
    with _open(path, "label") as img:
        try:
            img.load()
            if img.mode in ("L", "P"):
                arr = np.asarray(img)
            elif img.mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(img).astype(np.int32)
            else:
                raise DataError(
                    f"{path}: label file has mode {img.mode!r}; expected a single-channel "
                    "8/16-bit or palette PNG holding class ids (colour-coded labels are not supported)"
                )
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: label file is corrupt ({exc.__class__.__name__}: {exc})") from None
    return arr


def map_label(raw: np.ndarray, lut: np.ndarray, path: str = "<label>") -> np.ndarray:
    """Raw ids -> training ids (uint8, ignore 255). Raises DataError on ids outside the table."""
    if raw.size and int(raw.max()) >= len(lut):
        bad = np.unique(raw[raw >= len(lut)])[:10]
        raise DataError(f"{path}: label ids {bad.tolist()} are outside the class table")
    mapped = lut[raw]
    if (mapped == INVALID).any():
        bad = np.unique(raw[mapped == INVALID])[:10]
        raise DataError(f"{path}: label ids {bad.tolist()} are outside the class table")
    return mapped.astype(np.uint8)


def load_image_label(path_img, path_lbl, info: DatasetInfo) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate one pair: (RGB uint8 [H, W, 3], train ids uint8 [H, W]).

    Raises :class:`DataError` naming the file for a missing or corrupt file,
    label/image size mismatch, or label ids outside ``info``'s class table.
    """
    path_img = os.fsdecode(path_img)
    path_lbl = os.fsdecode(path_lbl)
    image = read_image(path_img)
    raw = read_label_raw(path_lbl)
    if raw.shape != image.shape[:2]:
        raise DataError(
            f"{path_lbl}: label size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from its image "
            f"{path_img} ({image.shape[1]}x{image.shape[0]})"
        )
    return image, map_label(raw, info.lut, path_lbl)


def check_pair_header(path_img: str, path_lbl: str) -> List[str]:
    """Cheap check (file headers only): both readable images of the same size."""
    problems, sizes = [], []
    for path, what in ((path_img, "image"), (path_lbl, "label")):
        try:
            with _open(path, what) as img:
                sizes.append(img.size)
        except DataError as exc:
            problems.append(str(exc))
    if not problems and sizes[0] != sizes[1]:
        problems.append(
            f"{path_lbl}: label size {sizes[1][0]}x{sizes[1][1]} (WxH) differs from its image "
            f"{path_img} ({sizes[0][0]}x{sizes[0][1]})"
        )
    return problems


def check_pair(path_img: str, path_lbl: str, info: DatasetInfo):
    """Full check (decodes both). Returns (problems, class_histogram or None)."""
    problems = []
    image = raw = None
    try:
        image = read_image(path_img)
    except DataError as exc:
        problems.append(str(exc))
    try:
        raw = read_label_raw(path_lbl)
    except DataError as exc:
        problems.append(str(exc))
    if raw is None:
        return problems, None
    if image is not None and raw.shape != image.shape[:2]:
        problems.append(
            f"{path_lbl}: label size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from its image "
            f"{path_img} ({image.shape[1]}x{image.shape[0]})"
        )
    try:
        mapped = map_label(raw, info.lut, path_lbl)
    except DataError as exc:
        problems.append(str(exc))
        return problems, None
    hist = np.bincount(mapped.ravel(), minlength=256)
    return problems, hist


def list_images(folder: str) -> List[str]:
    """Sorted image files in ``folder`` (non-recursive)."""
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
    )


def pair_by_stem(image_dir: str, label_dir: str, label_suffix: str = "", label_ext: str = ".png",
                 image_suffix: str = ""):
    """Pair ``image_dir/<stem><image_suffix>.<ext>`` with ``label_dir/<stem><label_suffix><label_ext>``.

    Returns (pairs, problems): problems name images without labels and labels
    without images.
    """
    problems = []
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not os.path.isdir(folder):
            problems.append(f"{folder}: {what} directory does not exist")
    if problems:
        return [], problems
    images = {}
    for path in list_images(image_dir):
        stem = os.path.splitext(os.path.basename(path))[0]
        if image_suffix:
            if not stem.endswith(image_suffix):
                continue
            stem = stem[: -len(image_suffix)]
        images[stem] = path
    labels = {}
    for name in sorted(os.listdir(label_dir)):
        if not name.endswith(label_suffix + label_ext):
            continue
        labels[name[: len(name) - len(label_suffix + label_ext)]] = os.path.join(label_dir, name)
    pairs = []
    for stem, path in sorted(images.items()):
        if stem in labels:
            pairs.append((path, labels[stem]))
        else:
            problems.append(f"{path}: no label file (expected {os.path.join(label_dir, stem + label_suffix + label_ext)})")
    for stem in sorted(set(labels) - set(images)):
        problems.append(f"{labels[stem]}: label file has no image in {image_dir}")
    return pairs, problems


__all__ = [
    "DataError", "IGNORE", "load_image_label", "read_image", "read_label_raw", "map_label",
    "check_pair", "check_pair_header", "list_images", "pair_by_stem", "format_problems",
]
