"""The pixel rule of every image file hmsa_keras reads: uint8 RGB ``[H, W, 3]``, upright.

Imports only NumPy and Pillow (no TensorFlow, nothing else of hmsa_keras), so the data
pipeline (:mod:`hmsa_keras.data.io`, which adds DataError messages and ``hmsa-data check``
notes on top) and the standalone deployment scripts (``export/litert_runner.py``,
``export/serving_client.py``, ``export/grpc_client.py``, which carry this file beside them
when copied to a device: ``export/image_io.py`` links here) share one implementation:

- **Orientation**: the EXIF ``Orientation`` tag (0x0112, values 2-8: mirrored and/or
  rotated; 6 = a phone photo taken upright, stored sideways) is applied to the pixels, so a
  file is used as image viewers show it.
- **16-bit greyscale** (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` holding values
  0..65535, as Pillow opens 16-bit PNGs) is reduced to 8 bits by keeping the high byte,
  ``v >> 8`` (65535 -> 255; Pillow's rule for 16-bit colour PNGs and TensorFlow's
  ``tf.image.convert_image_dtype`` from uint16), then copied to the three channels.
- **Other modes** (``L``, ``LA``, ``P``, ``PA``, ``RGBA`` (alpha dropped, not composited),
  ``CMYK``, ``YCbCr``, ``1``) become RGB with Pillow's ``convert("RGB")``.
- **Refused** with ValueError: float images (``F``) and 32-bit integer images with values
  outside 0..65535 (their range is ambiguous), and modes Pillow cannot convert.
"""

from __future__ import annotations

import io
import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
# What each EXIF orientation value does to the stored pixels to show them upright.
ORIENTATIONS = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed (mirrored and rotated 90 degrees)",
    6: "rotated 90 degrees clockwise",
    7: "transversed (mirrored and rotated 90 degrees)",
    8: "rotated 90 degrees counter-clockwise",
}
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def exif_orientation(image: Image.Image, loaded: bool = True) -> int:
    """The EXIF orientation (1..8) of an opened image, 1 when absent or invalid.

    ``loaded=False`` reads only what the header already holds (JPEG/WebP/TIFF, a PNG eXIf
    chunk before the pixel data) instead of decoding a PNG to find a late eXIf chunk."""
    try:
        if not loaded and image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        value = int(exif.get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block: Pillow's viewers ignore it too
        return 1
    return value if value in ORIENTATIONS else 1


def upright(image: Image.Image) -> Tuple[Image.Image, int]:
    """(the image as displayed, the EXIF orientation that was applied; 1 = none)."""
    orientation = exif_orientation(image)
    if orientation == 1:
        return image, 1
    return ImageOps.exif_transpose(image), orientation


def to_rgb(
    image: Image.Image, name: str = "<image>"
) -> Tuple[np.ndarray, Optional[Tuple[int, int]]]:
    """The rule (module docstring) on an opened, upright Pillow image.

    Returns (uint8 RGB ``[H, W, 3]``, (min, max) of the stored values of a 16/32-bit grey
    image or None). Raises ValueError naming ``name`` for float images, 32-bit values
    outside 0..65535 and modes that cannot be converted."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"{name}: 32-bit integer image (mode {image.mode}) with values {lo}..{hi}, "
                "outside 0..65535: its range is ambiguous; convert it to 8-bit RGB first"
            )
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1), (lo, hi)
    if image.mode == "F":
        raise ValueError(
            f"{name}: 32-bit float image (mode F): its range is ambiguous; convert it to "
            "8-bit RGB first"
        )
    try:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as exc:
        raise ValueError(
            f"{name}: image mode {image.mode!r} cannot be converted to RGB ({exc})"
        ) from None
    return np.asarray(rgb, np.uint8), None


def read_image(path) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of an image file (or of its bytes), by the rule above.
    Raises ValueError naming the file when it is missing, unreadable or refused."""
    name = "<bytes>" if isinstance(path, (bytes, bytearray)) else os.fspath(path)
    try:
        source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path
        with Image.open(source) as image:
            image.load()
            return to_rgb(upright(image)[0], name)[0]
    except FileNotFoundError:
        raise ValueError(f"{name}: image file does not exist") from None
    except ValueError as exc:
        if str(exc).startswith(name):
            raise
        raise ValueError(f"{name}: not a readable image ({exc})") from None
    except Exception as exc:  # Pillow raises several types for bad files
        raise ValueError(
            f"{name}: not a readable image ({exc.__class__.__name__}: {exc})"
        ) from None


def needs_conversion(path) -> bool:
    """True unless ``path`` is a plain 8-bit RGB PNG/JPEG without EXIF rotation, i.e. unless
    TensorFlow's ``decode_image`` reads it exactly as :func:`read_image` does (the serving
    clients then send the file's own bytes, else a re-encoded PNG)."""
    try:
        with Image.open(path) as image:
            return not (
                image.format in ("PNG", "JPEG")
                and image.mode == "RGB"
                and exif_orientation(image) == 1
                and "transparency" not in image.info
            )
    except Exception:
        return True


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``[H, W, 3]`` (or ``[H, W]``) array."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(path) -> bytes:
    """What to send to an encoded-image signature for ``path``: the file's own bytes when
    TensorFlow decodes them as :func:`read_image` reads them, else the PNG of
    :func:`read_image`'s result."""
    if needs_conversion(path):
        return encode_png(read_image(path))
    with open(path, "rb") as f:
        return f.read()


__all__ = [
    "EXIF_ORIENTATION",
    "ORIENTATIONS",
    "SIXTEEN_BIT_MODES",
    "encode_png",
    "exif_orientation",
    "image_bytes",
    "needs_conversion",
    "read_image",
    "to_rgb",
    "upright",
]
