#!/usr/bin/env python3
"""On-device segmentation with a ``.tflite`` file and LiteRT alone.

Imports only numpy, Pillow and ``ai_edge_litert`` (no TensorFlow), plus the project's
``image_io.py`` (the image reader: EXIF orientation, 16-bit greyscale, L/LA/P/RGBA/CMYK) and
``conventions.py`` (the minimum-size rule): from the installed package, or, on a device
without it, the copies beside this file (``cp export/*.py`` copies all three: in the
repository, ``export/`` holds links to them). Usage::

    python export/litert_runner.py model.tflite image.png --out out.png
    python export/litert_runner.py model.tflite a.png b.png --out outdir/ --raw
    python export/litert_runner.py model.tflite --benchmark 512x1024

It handles models with a dynamic input size (the input tensor is resized to each image)
and fixed-size ones (the image is resized to the model's size and the class map resized
back, nearest), uint8 pixel inputs, int8/uint8-quantized inputs and outputs (quantized
with the tensor's scale/zero point) and float inputs, and classes-only files.

Input contract (the project's, ``hmsa_keras.conventions``): uint8 RGB ``[H, W, 3]``
(``segment``) or ``[N, H, W, 3]`` (``segment_batch``; ``N = 0`` gives empty results);
every side must be at least ``MIN_SIDE`` pixels at the smallest scale of the file's chain
(read from its metadata), else ``ValueError`` with one line naming the image, its size and
the scale. Outputs: a colour PNG (``--raw``: the class ids as an 8-bit PNG; ``--overlay
A``: blended over the image). Class colours and names come from the metadata embedded in
the file by ``hmsa-export`` (or its ``.metadata.json``, or ``--labels labels.json``), else
a built-in palette.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

try:  # inside the package: the project's own modules
    from hmsa_keras import conventions, image_io
except ImportError:  # copied to a device without hmsa_keras: the copies beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import conventions  # noqa: E402
    import image_io  # noqa: E402

MIN_SIDE = conventions.MIN_SIDE
min_size_problem = conventions.min_size_problem

# Cityscapes' 19 train-id colours, then a deterministic spread for more classes.
_BASE_COLORS = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
METADATA_NAME = "hmsa_metadata"


def default_palette():
    rng = np.random.RandomState(0)
    table = rng.randint(0, 256, (256, 3)).astype(np.uint8)
    table[: len(_BASE_COLORS)] = np.asarray(_BASE_COLORS, np.uint8)
    return table


def palette_of(colors):
    table = default_palette()
    if colors:
        table[: len(colors)] = np.asarray(colors, np.uint8)[:256]
    return table


def load_palette(path):
    with open(path) as f:
        return palette_of(json.load(f)["colors"])


def read_metadata(model_path):
    """The JSON metadata ``hmsa-export`` embeds in the flatbuffer (``metadata`` entry named
    ``hmsa_metadata``), else ``<model>.metadata.json`` beside it, else None."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        with open(model_path, "rb") as f:
            root = schema.Model.GetRootAs(bytearray(f.read()), 0)
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            name = entry.Name()
            if (name.decode() if isinstance(name, bytes) else name) == METADATA_NAME:
                return json.loads(
                    root.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8")
                )
    except (ImportError, OSError, ValueError):
        pass
    sidecar = (model_path[:-7] if model_path.endswith(".tflite") else model_path) + ".metadata.json"
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            return json.load(f)
    return None


def read_image(path):
    """uint8 RGB ``[H, W, 3]``, EXIF orientation applied (``image_io.read_image``)."""
    return image_io.read_image(path)


def make_interpreter(model_path, num_threads=2):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=model_path, num_threads=num_threads)


class LiteRTSegmenter:
    """Runs a segmentation ``.tflite`` model on RGB images (numpy uint8 [H, W, 3]).

    ``metadata``: the file's embedded metadata (None if it has none); its ``scales`` give
    the minimum-size check, its ``colors`` the palette.
    """

    def __init__(self, model_path, num_threads=2):
        self.path = model_path
        self.metadata = read_metadata(model_path)
        self.interpreter = make_interpreter(model_path, num_threads)
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"{model_path}: expected one input (the image), found {len(inputs)}")
        self.input = inputs[0]
        signature = list(self.input.get("shape_signature", self.input["shape"]))
        if len(signature) != 4 or signature[-1] != 3:
            raise ValueError(f"{model_path}: input must be [1, H, W, 3], found {signature}")
        self.dynamic = any(int(d) < 0 for d in signature[1:3])
        self.fixed_size = None if self.dynamic else (int(signature[1]), int(signature[2]))
        self.scales = (
            tuple(self.metadata["scales"])
            if self.metadata and self.metadata.get("scales")
            else None
        )
        self.outputs = self._name_outputs()
        self._shape = None

    def _name_outputs(self):
        """{'classes': details, 'probabilities': details} from the signature names when the
        model has them, else by dtype (int32 -> classes)."""
        details = {d["index"]: d for d in self.interpreter.get_output_details()}
        named = {}
        try:
            runner = self.interpreter.get_signature_runner()
            for name, d in runner.get_output_details().items():
                named[name] = details.get(d["index"], d)
        except (ValueError, KeyError, RuntimeError):
            pass
        if "classes" not in named and "probabilities" not in named:
            named = {}
            for d in details.values():
                named["classes" if d["dtype"] == np.int32 else "probabilities"] = d
        return named

    def check_size(self, height, width, name="image"):
        """Raises ValueError (one line: ``name``, its size, the scale) when an image of
        ``height`` x ``width`` is below the minimum size for the file's chain. Fixed-size
        files take any image (it is resized to the model's size)."""
        if self.fixed_size:
            return
        if height < 1 or width < 1:
            raise ValueError(f"{name}: empty image of {height}x{width} (HxW)")
        problem = min_size_problem(height, width, self.scales) if self.scales else None
        if problem:
            raise ValueError(f"{name}: {problem}")

    def _prepare(self, h, w, name="image"):
        shape = (1, h, w, 3)
        if self._shape != shape:
            try:
                if self.dynamic:
                    self.interpreter.resize_tensor_input(self.input["index"], shape)
                self.interpreter.allocate_tensors()
            except RuntimeError as exc:  # e.g. "XNNPack delegate failed to reshape runtime"
                self._shape = None
                raise ValueError(
                    f"{name}: {self.path} cannot run on an image of {h}x{w} (HxW) (LiteRT: "
                    f"{str(exc).splitlines()[0]}); images must be at least {MIN_SIDE} pixels "
                    "per side at the smallest scale of the chain"
                ) from None
            self._shape = shape

    def _feed(self, image):
        dtype = self.input["dtype"]
        scale, zero = self.input.get("quantization", (0.0, 0))
        if dtype in (np.int8, np.uint8) and scale:
            info = np.iinfo(dtype)
            q = np.round(image.astype(np.float32) / scale + zero)
            return np.clip(q, info.min, info.max).astype(dtype)[None]
        return image.astype(dtype)[None]

    @staticmethod
    def _dequantize(details, value):
        scale, zero = details.get("quantization", (0.0, 0))
        if value.dtype in (np.int8, np.uint8, np.int16) and scale:
            return (value.astype(np.float32) - zero) * scale
        return value

    def segment(self, image, probabilities=False, name="image"):
        """Returns ``{'classes': [H, W] int32}`` (+ ``'probabilities'`` [H, W, K] float32 when
        asked for and the file has them). Raises ValueError for a bad or too small image."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{name}: expected uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}"
            )
        h, w = image.shape[:2]
        self.check_size(h, w, name)
        x = image
        if self.fixed_size and (h, w) != self.fixed_size:
            x = np.asarray(Image.fromarray(image).resize(self.fixed_size[::-1], Image.BILINEAR))
        self._prepare(*x.shape[:2], name=name)
        self.interpreter.set_tensor(self.input["index"], self._feed(x))
        self.interpreter.invoke()
        result = {}
        if "probabilities" in self.outputs and (probabilities or "classes" not in self.outputs):
            result["probabilities"] = self._dequantize(
                self.outputs["probabilities"],
                self.interpreter.get_tensor(self.outputs["probabilities"]["index"]),
            )[0]
        if "classes" in self.outputs:
            classes = self.interpreter.get_tensor(self.outputs["classes"]["index"])[0]
        else:
            classes = np.argmax(result["probabilities"], axis=-1)
        classes = classes.astype(np.int32)
        if classes.shape != (h, w):
            classes = np.asarray(Image.fromarray(classes).resize((w, h), Image.NEAREST)).astype(
                np.int32
            )
            result.pop("probabilities", None)  # only the class map is resized back
        result["classes"] = classes
        return result

    def segment_batch(self, images, name="images"):
        """int32 ``[N, H, W]`` class maps of a uint8 ``[N, H, W, 3]`` batch (one invoke per
        image); ``N = 0`` returns ``[0, H, W]``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{name}: expected a uint8 batch [N, H, W, 3] of RGB images, got "
                f"{images.dtype} {images.shape}"
            )
        if images.shape[0] == 0:
            return np.zeros(images.shape[:3], np.int32)
        self.check_size(images.shape[1], images.shape[2], name)
        return np.stack(
            [self.segment(img, name=f"{name}[{i}]")["classes"] for i, img in enumerate(images)]
        )

    def benchmark(self, size, runs=10, warmup=2, seed=0):
        """Median and all latencies (seconds) of ``invoke`` at ``size`` = (h, w)."""
        h, w = self.fixed_size or size
        self.check_size(h, w, f"benchmark size {h}x{w}")
        image = np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)
        self._prepare(h, w)
        self.interpreter.set_tensor(self.input["index"], self._feed(image))
        for _ in range(warmup):
            self.interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append(time.perf_counter() - start)
        return statistics.median(times), times


def colorize(classes, palette):
    return palette[np.clip(classes, 0, 255)]


def _parse_size(text):
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help=".tflite file")
    parser.add_argument("images", nargs="*", help="RGB images (PNG/JPEG)")
    parser.add_argument("--out", help="output PNG (one image) or folder (default: <image>_seg.png)")
    parser.add_argument(
        "--raw", action="store_true", help="write class ids as an 8-bit PNG, not colours"
    )
    parser.add_argument(
        "--overlay", type=float, default=0.0, help="blend colours over the image (0..1)"
    )
    parser.add_argument(
        "--labels", help="labels.json with 'colors' (default: labels.json beside the model)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--benchmark", metavar="HxW", help="time invoke at this size and exit")
    parser.add_argument("--runs", type=int, default=10, help="timed runs for --benchmark")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.model):
        parser.error(f"model {args.model!r}: no such file (expected a .tflite file)")
    with open(args.model, "rb") as f:
        if f.read(8)[4:8] != b"TFL3":  # the FlatBuffers file identifier of TFLite models
            parser.error(f"model {args.model!r} is not a TFLite model (no TFL3 identifier)")
    segmenter = LiteRTSegmenter(args.model, args.threads)
    if args.benchmark:
        median, _ = segmenter.benchmark(_parse_size(args.benchmark), args.runs)
        size = segmenter.fixed_size or _parse_size(args.benchmark)
        print(
            f"{args.model}: median {median * 1000:.1f} ms at {size[0]}x{size[1]} "
            f"({args.threads} threads, {args.runs} runs)"
        )
        return 0
    if not args.images:
        parser.error("give at least one image (or --benchmark HxW)")
    labels = args.labels or os.path.join(
        os.path.dirname(os.path.abspath(args.model)), "labels.json"
    )
    if args.labels or not (segmenter.metadata and segmenter.metadata.get("colors")):
        palette = load_palette(labels) if os.path.isfile(labels) else default_palette()
    else:
        palette = palette_of(segmenter.metadata["colors"])
    many = len(args.images) > 1 or (
        args.out and (args.out.endswith(os.sep) or os.path.isdir(args.out))
    )
    if many and args.out:
        os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        try:
            image = read_image(path)
            start = time.perf_counter()
            classes = segmenter.segment(image, name=path)["classes"]
        except ValueError as exc:
            print(f"litert_runner: error: {exc}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - start
        stem = os.path.splitext(os.path.basename(path))[0]
        if not args.out:
            out = os.path.join(os.path.dirname(path), f"{stem}_seg.png")
        else:
            out = os.path.join(args.out, f"{stem}.png") if many else args.out
        if args.raw:
            picture = np.clip(classes, 0, 255).astype(np.uint8)
        else:
            picture = colorize(classes, palette)
            if args.overlay > 0:
                picture = np.clip(
                    (1 - args.overlay) * image + args.overlay * picture + 0.5, 0, 255
                ).astype(np.uint8)
        Image.fromarray(picture).save(out)
        found = np.unique(classes)
        print(
            f"{path} -> {out} ({image.shape[0]}x{image.shape[1]}, {elapsed * 1000:.0f} ms, "
            f"classes {found.tolist()})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
