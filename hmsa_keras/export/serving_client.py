#!/usr/bin/env python3
"""REST client for an hmsa_keras SavedModel served by TensorFlow Serving (port 8501).

Needs only numpy and Pillow (plus the standard library, and ``image_io.py`` beside this
file: the image reader, EXIF orientation and 16-bit files handled)::

    python export/serving_client.py street.jpg --out classes.png            (b64 PNG/JPEG, PNG back)
    python export/serving_client.py street.png --signature serving_default --out classes.png
    python export/serving_client.py street.png --signature with_details --out classes.png
    python export/serving_client.py street.png --scales 0.25,0.5,1.0 --out classes.png
    python export/serving_client.py --status

Request formats (``http://HOST:PORT/v1/models/NAME:predict``):

- encoded (default, ``serving_encoded_png``): ``{"signature_name": ..., "instances":
  [{"b64": "<PNG/JPEG bytes>"}]}``; the reply is the class map as a base64 PNG
  (``{"predictions": [{"b64": ...}]}``). ``serving_encoded`` returns int32 class ids as JSON.
- tensor (``serving_default``, ``with_details``, ``--scales``): ``{"signature_name": ...,
  "inputs": {"images": [[[[r, g, b], ...]]]}}`` (columnar, a batch of one uint8 image),
  about 7 bytes of JSON per pixel.

The class map is written as an 8-bit PNG of class ids (``--colors labels.json`` for colours).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

try:  # inside the package: the project's own modules
    from hmsa_keras import image_io
except ImportError:  # copied to a device without hmsa_keras: the copies beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import image_io  # noqa: E402

ENCODED_SIGNATURES = ("serving_encoded_png", "serving_encoded")
TENSOR_SIGNATURES = ("serving_default", "with_details")


def build_request(image, signature="serving_default", scales=None):
    """The JSON body (a dict) for one uint8 RGB image ``[H, W, 3]`` sent as a tensor."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    inputs = {"images": image[None].tolist()}
    if scales is not None:
        signature = "segment_with_scales"
        inputs["scales"] = [float(s) for s in scales]
    return {"signature_name": signature, "inputs": inputs}


def build_encoded_request(data, signature="serving_encoded_png"):
    """The JSON body for encoded image file(s) (``bytes`` or a list of them, one size)."""
    items = [data] if isinstance(data, (bytes, bytearray)) else list(data)
    return {
        "signature_name": signature,
        "instances": [{"b64": base64.b64encode(bytes(b)).decode("ascii")} for b in items],
    }


def _unwrap(value):
    """Nested JSON values -> numpy, ``{"b64": ...}`` objects -> bytes."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return np.array([_unwrap(v) for v in value], dtype=object)
    return np.asarray(value)


def parse_response(body):
    """``{"outputs": ...}`` / ``{"predictions": [...]}`` -> dict of numpy arrays with the
    batch dimension (a bare single output is named ``classes``, or ``classes_png_bytes``
    when it holds b64 objects); raises RuntimeError with the server's ``error`` message."""
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    if "predictions" in body:
        preds = body["predictions"]
        if preds and isinstance(preds[0], dict) and set(preds[0]) != {"b64"}:
            return {k: _unwrap([p[k] for p in preds]) for k in preds[0]}
        outputs = _unwrap(preds)
        return {"classes_png_bytes" if outputs.dtype == object else "classes": outputs}
    outputs = body["outputs"]
    if not isinstance(outputs, dict):  # a signature with one output returns it bare
        value = _unwrap(outputs)
        return {"classes_png_bytes" if value.dtype == object else "classes": value}
    return {k: _unwrap(v) for k, v in outputs.items()}


def post(url, body, timeout=300):
    """POSTs a JSON body; returns ``(parsed outputs, request bytes, response bytes)``."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:  # 400 with {"error": ...} for bad inputs
        raw = exc.read()
        try:
            parse_response(json.loads(raw))
        except (ValueError, KeyError):
            raise RuntimeError(f"HTTP {exc.code}: {exc.reason}") from None
    return parse_response(json.loads(raw)), len(data), len(raw)


def decode_class_png(data):
    """int32 ``[H, W]`` class ids of a single-channel PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int32)


def classes_of(outputs):
    """The int32 class map ``[H, W]`` of the first image of a parsed response."""
    if "classes_png_bytes" in outputs:
        return decode_class_png(outputs["classes_png_bytes"][0])
    return np.asarray(outputs["classes"][0]).astype(np.int32)


def predict(url, image, signature="serving_default", scales=None, timeout=300):
    """Outputs for one uint8 image sent as a tensor (see :func:`build_request`)."""
    return post(url, build_request(image, signature, scales), timeout)[0]


def predict_encoded(url, data, signature="serving_encoded_png", timeout=300):
    """Outputs for encoded image bytes (see :func:`build_encoded_request`)."""
    return post(url, build_encoded_request(data, signature), timeout)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help="image file to segment")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8501, help="TF Serving REST port")
    parser.add_argument(
        "--model", default="hmsa", help="--model_name given to tensorflow_model_server"
    )
    parser.add_argument(
        "--signature",
        default="serving_encoded_png",
        choices=list(ENCODED_SIGNATURES + TENSOR_SIGNATURES),
    )
    parser.add_argument(
        "--scales", help="comma-separated chain for segment_with_scales, e.g. 0.5,1.0,2.0"
    )
    parser.add_argument("--out", help="write the class map here (PNG)")
    parser.add_argument(
        "--colors", help="labels.json written by hmsa-export, to colour the class map"
    )
    parser.add_argument("--status", action="store_true", help="print the model status and exit")
    args = parser.parse_args(argv)

    base = f"http://{args.host}:{args.port}/v1/models/{args.model}"
    if args.status:
        with urllib.request.urlopen(base, timeout=30) as response:
            print(json.dumps(json.load(response), indent=2))
        return 0
    if not args.image:
        parser.error("give an image (or --status)")
    scales = [float(s) for s in args.scales.split(",")] if args.scales else None
    if args.signature in ENCODED_SIGNATURES and scales is None:
        outputs, sent, received = post(
            base + ":predict",
            build_encoded_request(image_io.image_bytes(args.image), args.signature),
        )
    else:
        outputs, sent, received = post(
            base + ":predict",
            build_request(image_io.read_image(args.image), args.signature, scales),
        )
    classes = classes_of(outputs)
    print(
        f"{args.image}: {classes.shape[0]}x{classes.shape[1]} class map, "
        f"classes {np.unique(classes).tolist()}; "
        f"request {sent / 1e6:.2f} MB, response {received / 1e6:.2f} MB"
    )
    if args.out:
        from PIL import Image

        if args.colors:
            with open(args.colors) as f:
                colors = np.asarray(json.load(f)["colors"], np.uint8)
            table = np.zeros((256, 3), np.uint8)
            table[: len(colors)] = colors
            Image.fromarray(table[np.clip(classes, 0, 255)]).save(args.out)
        else:
            Image.fromarray(np.clip(classes, 0, 255).astype(np.uint8)).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
