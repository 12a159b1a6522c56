"""Reading an image file as the models expect it: uint8 RGB ``[H, W, 3]``, upright.

Imports only NumPy and Pillow (no TensorFlow, no hmsa_keras), so the standalone
deployment scripts (``litert_runner.py``, ``serving_client.py``, ``grpc_client.py``) can
carry it: copy this file beside them (``export/image_io.py`` links here). It follows the
same rule as the project's reader (:func:`hmsa_keras.data.io.read_image`; a test checks
that the two agree on every mode below):

- the EXIF orientation tag is applied (phone photos saved sideways come out as every
  viewer shows them);
- 16-bit greyscale (``I;16``/``I;16B``/``I;16L``, and ``I`` as Pillow opens 16-bit PNGs)
  is brought to 8 bits by keeping the high byte (``value >> 8``, so 65535 -> 255);
  32-bit float greyscale (``F``) is taken as 0..1 if its maximum is <= 1, else 0..255;
- ``L``, ``LA``, ``P``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr``, ``1`` become RGB with Pillow's
  ``convert("RGB")`` (alpha is dropped, not composited).

Raises ``ValueError`` naming the file for a file that cannot be read.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1..8) of an opened image; 1 when absent."""
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # malformed EXIF: treat as upright
        return 1


def to_rgb(image: Image.Image) -> np.ndarray:
    """An opened Pillow image (any mode above) -> uint8 RGB ``[H, W, 3]`` (no EXIF step)."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.int64)
        grey = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        grey = np.asarray(image, np.float32)
        scale = 255.0 if grey.size and float(np.nanmax(grey)) <= 1.0 else 1.0
        grey = np.clip(np.round(np.nan_to_num(grey) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def read_image(path) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of an image file, EXIF orientation applied (module docstring).
    ``path`` may also be the file's bytes. Raises ValueError naming the file."""
    name = "<bytes>" if isinstance(path, (bytes, bytearray)) else os.fspath(path)
    try:
        source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path
        with Image.open(source) as image:
            image.load()
            if exif_orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except FileNotFoundError:
        raise ValueError(f"{name}: image file does not exist") from None
    except Exception as exc:  # Pillow raises several types for bad files
        raise ValueError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def needs_conversion(path) -> bool:
    """True unless ``path`` is a plain 8-bit RGB PNG/JPEG without EXIF rotation, i.e. unless
    TensorFlow's ``decode_image`` would read it exactly as :func:`read_image` does (the
    serving clients then send the file's own bytes, else a re-encoded PNG)."""
    try:
        with Image.open(path) as image:
            return not (image.format in ("PNG", "JPEG") and image.mode == "RGB"
                        and exif_orientation(image) == 1 and "transparency" not in image.info)
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


__all__ = ["encode_png", "exif_orientation", "image_bytes", "needs_conversion", "read_image", "to_rgb"]
