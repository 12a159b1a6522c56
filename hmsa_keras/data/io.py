"""Reading image/label files and checking them, with errors that name the file.

ONE reader for images (:func:`read_image`) and one for label files
(:func:`read_label_raw`), used by the tf.data pipeline (through
:func:`load_image_label` inside ``tf.numpy_function``, so a bad file stops
training with a :class:`DataError` message naming it), ``hmsa-data check``
(:func:`check_pair`), ``hmsa-predict`` / ``hmsa-autolabel`` and the Python API.

The file rules (docs/data.md, "Image files"):

- **Orientation**: a file is used as image viewers show it: an EXIF ``Orientation`` tag
  (0x0112, values 2-8: mirrored and/or rotated, e.g. 6 = phone photo taken upright,
  stored rotated) is applied to the pixels, for images AND label files alike (one rule
  for both readers: a label drawn on the picture as displayed matches it). Label PNGs
  rarely carry EXIF; an image with an orientation tag and a label without one are thus
  compared as displayed (size-mismatch messages say that the rotation was applied).
- **Images** become RGB uint8 ``[H, W, 3]``: 8-bit grey (``L``), grey+alpha (``LA``),
  palette (``P``), ``RGBA`` (alpha dropped), ``CMYK`` and ``YCbCr`` are converted with
  PIL's ``convert("RGB")``; 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and
  ``I`` holding values 0..65535) is reduced to 8 bits by keeping the high byte,
  ``v >> 8``, the rule PIL applies to 16-bit colour PNGs and TensorFlow's
  ``tf.image.convert_image_dtype`` to uint16, then copied to the three channels. 32-bit
  images outside 0..65535 and float images (``F``) are refused: their range is ambiguous.
- **Label files** hold class ids in one channel: ``L``/``P`` (palette index) as uint8,
  ``I;16*``/``I`` as int32 (raw values, never rescaled). Colour labels are refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from hmsa_keras.data.labels import IGNORE, INVALID, DatasetInfo
from hmsa_keras.image_io import ORIENTATIONS, SIXTEEN_BIT_MODES, exif_orientation, to_rgb, upright

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

LABEL_MODES = ("L", "P", "I") + SIXTEEN_BIT_MODES


class DataError(ValueError):
    """A dataset problem: missing/corrupt files, mismatched sizes, bad label ids, empty split."""


@dataclasses.dataclass(frozen=True)
class FileNotes:
    """What the reader did to a file, for messages and ``hmsa-data check`` warnings.

    ``mode``: PIL mode as stored; ``stored_hw``: (height, width) as stored;
    ``orientation``: the EXIF orientation applied (1 = none); ``value_range``: (min, max) of
    the stored values of a 16/32-bit image (None otherwise).
    """

    path: str
    mode: str
    stored_hw: Tuple[int, int]
    orientation: int = 1
    value_range: Optional[Tuple[int, int]] = None

    @property
    def rotated(self) -> bool:
        return self.orientation in ORIENTATIONS

    @property
    def hw(self) -> Tuple[int, int]:
        """(height, width) as displayed, i.e. after the EXIF orientation."""
        h, w = self.stored_hw
        return (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)

    def size_text(self) -> str:
        """``WxH`` as displayed, with how it came about when the orientation changed it."""
        h, w = self.hw
        text = f"{w}x{h}"
        if self.rotated:
            text += (
                f" as displayed: its EXIF orientation {self.orientation} "
                f"({ORIENTATIONS[self.orientation]}) was applied; stored as "
                f"{self.stored_hw[1]}x{self.stored_hw[0]}"
            )
        return text

    def warnings(self, what: str = "image") -> List[str]:
        """The handled-but-notable facts of this file, one line each (``hmsa-data check``)."""
        out = []
        if self.rotated:
            h, w = self.hw
            out.append(
                f"{self.path}: {what} has EXIF orientation {self.orientation} "
                f"({ORIENTATIONS[self.orientation]}): used as displayed, {w}x{h} (WxH), "
                f"not as stored ({self.stored_hw[1]}x{self.stored_hw[0]})"
            )
        if what == "image" and self.value_range is not None:
            lo, hi = self.value_range
            text = (
                f"{self.path}: 16-bit grey image (mode {self.mode}, values {lo}..{hi}) reduced "
                "to 8 bits (v >> 8)"
            )
            if hi < 256:
                text += "; its values all fit in 8 bits, so it becomes black: convert it yourself"
            elif hi < 4096:
                text += f"; it uses 12 bits or less (max {hi}), so it will look dark"
            out.append(text)
        return out


def format_problems(title: str, problems: Sequence[str], limit: int = 20) -> str:
    """One readable message for a list of problems (the first ``limit`` listed)."""
    lines = [f"{title}: {len(problems)} problem(s)"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(
            f"  ... and {len(problems) - limit} more (run `hmsa-data check` for the full list)"
        )
    return "\n".join(lines)


def _open(path: str, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file does not exist")
    try:
        return Image.open(path)
    except Exception as exc:  # PIL raises several types for bad headers
        raise DataError(
            f"{path}: {what} file is not a readable image ({exc.__class__.__name__}: {exc})"
        ) from None


def pil_to_rgb(
    img: Image.Image, path: str = "<image>"
) -> Tuple[np.ndarray, Optional[Tuple[int, int]]]:
    """:func:`hmsa_keras.image_io.to_rgb` with its refusals as :class:`DataError`."""
    try:
        return to_rgb(img, path)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def read_image_with_notes(path: str) -> Tuple[np.ndarray, FileNotes]:
    """:func:`read_image` plus the :class:`FileNotes` of the file."""
    with _open(path, "image") as img:
        try:
            img.load()
            mode, stored = img.mode, (img.size[1], img.size[0])
            shown, orientation = upright(img)
            arr, value_range = pil_to_rgb(shown, path)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"{path}: image file is corrupt ({exc.__class__.__name__}: {exc})"
            ) from None
    return arr, FileNotes(path, mode, stored, orientation, value_range)


def read_image(path: str) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of an image file, as viewers show it (EXIF orientation
    applied; 16-bit grey reduced by ``v >> 8``; other modes converted: module docstring).

    Raises DataError naming the file: missing, unreadable, corrupt, or of an ambiguous
    range (float, 32-bit)."""
    return read_image_with_notes(os.fsdecode(path))[0]


def read_label_with_notes(path: str) -> Tuple[np.ndarray, FileNotes]:
    """:func:`read_label_raw` plus the :class:`FileNotes` of the file."""
    with _open(path, "label") as img:
        try:
            img.load()
            mode, stored = img.mode, (img.size[1], img.size[0])
            if mode not in LABEL_MODES:
                raise DataError(
                    f"{path}: label file has mode {mode!r}; expected a single-channel "
                    "8/16-bit or palette PNG holding class ids (colour-coded labels are not "
                    "supported)"
                )
            shown, orientation = upright(img)
            arr = np.asarray(shown)
            if mode not in ("L", "P"):
                arr = arr.astype(np.int32)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"{path}: label file is corrupt ({exc.__class__.__name__}: {exc})"
            ) from None
    return arr, FileNotes(path, mode, stored, orientation)


def read_label_raw(path: str) -> np.ndarray:
    """Raw label values [H, W] (uint8, or int32 for 16/32-bit files), as displayed (EXIF
    orientation applied, like images). Raises DataError.

    Palette ("P") PNGs give their palette indices (Mapillary), grey PNGs their values.
    """
    return read_label_with_notes(os.fsdecode(path))[0]


def read_header(path: str, what: str = "image") -> FileNotes:
    """Mode, stored size and EXIF orientation from the file header only (no decoding).
    Raises DataError for a missing or unreadable file."""
    with _open(path, what) as img:
        orientation = exif_orientation(img, loaded=False)
        return FileNotes(path, img.mode, (img.size[1], img.size[0]), orientation)


def image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image file as displayed (EXIF orientation applied), from its
    header. Raises DataError."""
    return read_header(os.fsdecode(path)).hw


def size_mismatch(image: FileNotes, label: FileNotes) -> Optional[str]:
    """The problem line when a label's size (as displayed) differs from its image's."""
    if image.hw == label.hw:
        return None
    text = (
        f"{label.path}: label size {label.size_text()} (WxH) differs from its image "
        f"{image.path} ({image.size_text()})"
    )
    if image.rotated and image.stored_hw == label.hw and not label.rotated:
        text += (
            "; the label matches the image as stored, i.e. it was made without the EXIF "
            "rotation: rotate the label the same way, or remove the image's orientation tag"
        )
    return text


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
    """Read and validate one pair: (RGB uint8 [H, W, 3], train ids uint8 [H, W]), both as
    displayed (EXIF orientation applied).

    Raises :class:`DataError` naming the file for a missing or corrupt file,
    label/image size mismatch, or label ids outside ``info``'s class table.
    """
    path_img = os.fsdecode(path_img)
    path_lbl = os.fsdecode(path_lbl)
    image, image_notes = read_image_with_notes(path_img)
    raw, label_notes = read_label_with_notes(path_lbl)
    problem = size_mismatch(image_notes, label_notes)
    if problem:
        raise DataError(problem)
    return image, map_label(raw, info.lut, path_lbl)


def check_pair_header(path_img: str, path_lbl: str) -> List[str]:
    """Cheap check (file headers only): both readable images of the same size as displayed."""
    problems, notes = [], []
    for path, what in ((path_img, "image"), (path_lbl, "label")):
        try:
            notes.append(read_header(path, what))
        except DataError as exc:
            problems.append(str(exc))
    if not problems:
        problem = size_mismatch(*notes)
        if problem:
            problems.append(problem)
    return problems


def check_pair(path_img: str, path_lbl: str, info: DatasetInfo, warnings: Optional[list] = None):
    """Full check (decodes both). Returns (problems, class_histogram or None).

    ``warnings``: a list to which the handled-but-notable facts are appended (EXIF-rotated
    files, 16-bit images reduced to 8 bits; see :meth:`FileNotes.warnings`)."""
    problems = []
    image_notes = label_notes = raw = None
    try:
        _, image_notes = read_image_with_notes(path_img)
    except DataError as exc:
        problems.append(str(exc))
    try:
        raw, label_notes = read_label_with_notes(path_lbl)
    except DataError as exc:
        problems.append(str(exc))
    if warnings is not None:
        for notes, what in ((image_notes, "image"), (label_notes, "label")):
            if notes is not None:
                warnings.extend(notes.warnings(what))
    if raw is None:
        return problems, None
    if image_notes is not None:
        problem = size_mismatch(image_notes, label_notes)
        if problem:
            problems.append(problem)
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


def pair_by_stem(
    image_dir: str,
    label_dir: str,
    label_suffix: str = "",
    label_ext: str = ".png",
    image_suffix: str = "",
):
    """Pair ``image_dir/<stem><image_suffix>.<ext>`` with
    ``label_dir/<stem><label_suffix><label_ext>``.

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
            problems.append(
                f"{path}: no label file "
                f"(expected {os.path.join(label_dir, stem + label_suffix + label_ext)})"
            )
    for stem in sorted(set(labels) - set(images)):
        problems.append(f"{labels[stem]}: label file has no image in {image_dir}")
    return pairs, problems


__all__ = [
    "DataError",
    "FileNotes",
    "IGNORE",
    "IMAGE_EXTENSIONS",
    "check_pair",
    "check_pair_header",
    "exif_orientation",
    "format_problems",
    "image_size",
    "list_images",
    "load_image_label",
    "map_label",
    "pair_by_stem",
    "pil_to_rgb",
    "read_header",
    "read_image",
    "read_image_with_notes",
    "read_label_raw",
    "read_label_with_notes",
    "size_mismatch",
]
