#!/usr/bin/env python3
"""Minimal REST client for an hmsa_keras SavedModel served by TensorFlow Serving.

Needs only numpy and Pillow (plus the standard library)::

    python export/serving_client.py street.png --out street_classes.png
    python export/serving_client.py street.png --signature with_details --out classes.png
    python export/serving_client.py street.png --scales 0.25,0.5,1.0 --out classes.png
    python export/serving_client.py --status

It POSTs ``{"signature_name": ..., "inputs": {"images": [[[[r, g, b], ...]]]}}`` (columnar
format, a batch of one uint8 image) to ``http://HOST:PORT/v1/models/NAME:predict`` and
writes the returned int32 class map as an 8-bit PNG (``--colors labels.json`` for colours).
``--scales`` calls the ``segment_with_scales`` signature with that chain.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

import numpy as np
from PIL import Image


def build_request(image, signature="serving_default", scales=None):
    """The JSON body for one uint8 RGB image ``[H, W, 3]``."""
    image = np.asarray(image, np.uint8)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
    inputs = {"images": image[None].tolist()}
    if scales is not None:
        signature = "segment_with_scales"
        inputs["scales"] = [float(s) for s in scales]
    return {"signature_name": signature, "inputs": inputs}


def parse_response(body):
    """``{"outputs": {...}}`` (or a single unnamed output) -> dict of numpy arrays, batch
    dimension kept; raises RuntimeError with the server's ``error`` message."""
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    outputs = body["outputs"]
    if not isinstance(outputs, dict):  # a signature with one output returns it bare
        outputs = {"classes": outputs}
    return {k: np.asarray(v) for k, v in outputs.items()}


def predict(url, image, signature="serving_default", scales=None, timeout=300):
    data = json.dumps(build_request(image, signature, scales)).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_response(json.load(response))
    except urllib.error.HTTPError as exc:  # 400 with {"error": ...} for bad inputs
        try:
            return parse_response(json.load(exc))
        except (ValueError, KeyError):
            raise RuntimeError(f"HTTP {exc.code}: {exc.reason}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help="RGB image to segment")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8501, help="TF Serving REST port")
    parser.add_argument("--model", default="hmsa", help="--model_name given to tensorflow_model_server")
    parser.add_argument("--signature", default="serving_default", choices=["serving_default", "with_details"])
    parser.add_argument("--scales", help="comma-separated chain for segment_with_scales, e.g. 0.5,1.0,2.0")
    parser.add_argument("--out", help="write the class map here (PNG)")
    parser.add_argument("--colors", help="labels.json written by hmsa-export, to colour the class map")
    parser.add_argument("--status", action="store_true", help="print the model status and exit")
    args = parser.parse_args(argv)

    base = f"http://{args.host}:{args.port}/v1/models/{args.model}"
    if args.status:
        with urllib.request.urlopen(base, timeout=30) as response:
            print(json.dumps(json.load(response), indent=2))
        return 0
    if not args.image:
        parser.error("give an image (or --status)")
    image = np.asarray(Image.open(args.image).convert("RGB"))
    scales = [float(s) for s in args.scales.split(",")] if args.scales else None
    outputs = predict(base + ":predict", image, args.signature, scales)
    classes = outputs["classes"][0].astype(np.int32)
    found = np.unique(classes).tolist()
    print(f"{args.image}: {classes.shape[0]}x{classes.shape[1]} class map, classes {found}; "
          f"outputs {sorted(outputs)}")
    if args.out:
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
