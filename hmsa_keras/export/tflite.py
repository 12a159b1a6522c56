"""TFLite conversion of an :class:`~hmsa_keras.export.saved_model.HMSAExportModule`, the
metadata an app reads, selective quantization, and the reader that evaluates a file.

Every variant takes uint8 RGB ``images`` ``[1, H, W, 3]`` (normalisation is inside the
graph) and returns ``classes`` int32 ``[1, H, W]`` and, unless converted with
``outputs=("classes",)``, ``probabilities`` float32 ``[1, H, W, K]``; H and W are dynamic
(resize the input tensor) unless converted with a fixed size (GPU/NNAPI delegates need
static shapes). Only TFLITE_BUILTINS are allowed: Flex (SELECT_TF_OPS) ops are refused at
conversion and checked for afterwards.

Variants:

- ``float32``: no quantization.
- ``float16``: float16 weights (dequantized at load on CPU, native on GPU delegates).
- ``dynamic_int8``: int8 weights, float activations (dynamic-range quantization).
- ``full_int8``: int8 weights and activations, calibrated on a representative dataset.
  The uint8 pixel input and the int32 class output are not float tensors, so they stay as
  they are; ``probabilities`` is dequantized to float32. ``float_ops`` (op types such as
  ``RESIZE_BILINEAR``) and ``float_nodes`` (tensor names) keep those ops in float
  (selective quantization, ``tf.lite.experimental.QuantizationDebugger``).

Converter log: the line ``input_inference_type: ..., output_inference_type: ...`` of the
quantizer names the type of the *float* interface tensors (what a float input/output would
be quantized to). Our input is already uint8 and is never quantized; we set
``inference_input_type = tf.uint8`` so that the line says so. ``output_inference_type:
FLOAT32`` is right for ``probabilities`` (dequantized to float32); ``classes`` is int32
whatever it says. :func:`io_summary` reads the real types from the file.

Metadata (:func:`embed_metadata`): the JSON of :meth:`HMSAExportModule.metadata` (classes,
colours, chain, input contract, normalisation) plus the file's inputs/outputs is stored
in the flatbuffer's ``metadata`` table under the name ``hmsa_metadata`` and written beside
the file as ``<name>.metadata.json`` (docs/export.md, "Metadata for apps").
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

log = logging.getLogger("hmsa_keras")

VARIANTS = ("float32", "float16", "dynamic_int8", "full_int8")
OUTPUT_SETS = {"classes_probabilities": ("classes", "probabilities"), "classes": ("classes",)}
METADATA_NAME = "hmsa_metadata"


def convert(
    module,
    variant,
    fixed_size=None,
    representative_images=None,
    outputs=("classes", "probabilities"),
    float_ops=(),
    float_nodes=(),
    float_shape_math=True,
):
    """Returns the ``.tflite`` flatbuffer (bytes) of ``module`` for ``variant``.

    ``representative_images``: iterable of uint8 ``[H, W, 3]`` arrays, required for
    ``full_int8`` (resized to ``fixed_size`` when given). ``outputs``: ``("classes",
    "probabilities")`` or ``("classes",)``. ``float_ops``/``float_nodes``: kept in float
    in ``full_int8`` (op type names, e.g. ``"MUL"``; output tensor names).
    ``float_shape_math``: in ``full_int8``, keep the image-size arithmetic in float
    (:func:`shape_math_nodes`; without it the scaled sizes of the chain are int8 numbers,
    off by pixels and clipped at the calibration size).
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown TFLite variant {variant!r}; allowed: {VARIANTS}")
    if variant == "full_int8" and representative_images is None:
        raise ValueError("full_int8 needs representative_images (calibration images)")
    if (float_ops or float_nodes) and variant != "full_int8":
        raise ValueError(f"float_ops/float_nodes apply to full_int8 only, not {variant!r}")
    if variant == "full_int8":
        return Int8Quantizer(module, representative_images, fixed_size, outputs).quantize(
            float_ops, float_nodes, float_shape_math
        )
    return make_converter(module, variant, fixed_size, representative_images, outputs).convert()


class Int8Quantizer:
    """Full-integer quantization with one calibration and any number of quantizations.

    Calibration (running the float model on every representative image, the slow part) is
    done once (``converter._experimental_calibrate_only``); :meth:`quantize` then applies
    TensorFlow's MLIR quantizer (``tensorflow.lite.python.convert.mlir_quantize``, what
    ``TFLiteConverter.convert`` and ``tf.lite.experimental.QuantizationDebugger`` call) with
    op types / nodes kept in float, as the debugger's ``denylisted_ops``/``denylisted_nodes``
    do, and with the converter's own interface types (uint8 input, float32 outputs), so the
    quantizer's log names them correctly.
    """

    def __init__(
        self, module, representative_images, fixed_size=None, outputs=("classes", "probabilities")
    ):
        converter = make_converter(module, "full_int8", fixed_size, representative_images, outputs)
        converter.experimental_new_quantizer = True
        converter._experimental_calibrate_only = True
        self.disable_per_channel = converter._experimental_disable_per_channel
        self.calibrated = converter.convert()

    def quantize(self, float_ops=(), float_nodes=(), float_shape_math=True):
        """The ``.tflite`` bytes; see :func:`convert` for the arguments."""
        from tensorflow.lite.python import convert as tfl_convert

        def run(nodes):
            return bytes(
                tfl_convert.mlir_quantize(
                    self.calibrated,
                    self.disable_per_channel,
                    input_data_type=tf.uint8,
                    output_data_type=tf.float32,
                    denylisted_ops=list(float_ops) or None,
                    denylisted_nodes=list(nodes) or None,
                )
            )

        nodes = tuple(float_nodes)
        content = run(nodes)
        if float_shape_math:
            shape_nodes = tuple(n for n in shape_math_nodes(content) if n not in nodes)
            if shape_nodes:
                log.info(
                    "full_int8: keeping the image-size arithmetic in float (%s)",
                    ", ".join(shape_nodes),
                )
                content = run(nodes + shape_nodes)
        return content


def shape_math_nodes(model_content):
    """Output names of the quantized ops of a full-integer file that compute on sizes, not
    on images: every int8/int16 op output of rank <= 1 (the activations of the networks
    are rank 4; rank-1 tensors here are ``[height, width]`` vectors such as
    ``floor(size * scale)`` of the scale chain, from ``fusion.scaled_size``)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(model_content))
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    names = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for index in op["outputs"]:
            t = tensors.get(index)
            if t is not None and t["dtype"] in (np.int8, np.int16) and len(t["shape"]) <= 1:
                names.append(t["name"])
    return sorted(set(names))


def make_converter(
    module,
    variant,
    fixed_size=None,
    representative_images=None,
    outputs=("classes", "probabilities"),
):
    """The configured ``TFLiteConverter`` for ``variant`` (see :func:`convert`)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        module.tflite_saved_model(fixed_size, outputs=tuple(outputs)),
        signature_keys=["serving_default"],
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "full_int8":
        if representative_images is None:
            raise ValueError("full_int8 needs representative_images (calibration images)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(representative_images, fixed_size)
        converter.inference_input_type = tf.uint8  # the input IS uint8 pixels (module docstring)
    return converter


def resize_uint8(image, size):
    """uint8 ``[H, W, 3]`` -> uint8 ``[h, w, 3]`` (TensorFlow bilinear, rounded)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return tf.cast(
        tf.round(tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), size), 0, 255)),
        tf.uint8,
    ).numpy()


def _representative(images, fixed_size):
    images = list(images)
    if not images:
        raise ValueError("full_int8 needs at least one calibration image")

    def generate():
        for image in images:
            image = np.asarray(image, np.uint8)
            if fixed_size:
                image = resize_uint8(image, fixed_size)
            yield [image[None]]

    return generate


# ----------------------------------------------------------------------------- flatbuffer
def operator_codes(model_content):
    """Names of the operator codes in a ``.tflite`` flatbuffer: builtin names, or
    ``CUSTOM:<code>`` for custom and Flex ops."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(bytearray(model_content), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        op = model.OperatorCodes(i)
        code = max(op.BuiltinCode(), op.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append("CUSTOM:" + (op.CustomCode() or b"").decode())
        else:
            codes.append(names.get(code, str(code)))
    return codes


def non_builtin_ops(model_content):
    """Custom or Flex (SELECT_TF_OPS) operator codes in the model; empty when builtin-only."""
    return [c for c in operator_codes(model_content) if c.startswith("CUSTOM:")]


def embed_metadata(model_content, metadata, name=METADATA_NAME):
    """Returns ``model_content`` with ``metadata`` (a JSON-able dict) stored as UTF-8 JSON in
    a new buffer named ``name`` in the flatbuffer's ``metadata`` table (an entry of the same
    name is replaced). The graph, tensors and weights are untouched."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytearray(model_content), 0))
    data = json.dumps(metadata, sort_keys=True).encode("utf-8")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != name] + [entry]
    builder = flatbuffers.Builder(len(model_content) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def read_metadata(model, name=METADATA_NAME):
    """The JSON metadata embedded by :func:`embed_metadata` (``model``: path or bytes), else
    the ``<file>.metadata.json`` beside a path, else None."""
    from ai_edge_litert import schema_py_generated as schema

    content = model
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            content = f.read()
    root = schema.Model.GetRootAs(bytearray(content), 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _text(entry.Name()) == name:
            return json.loads(root.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(sidecar_path(model)):
        with open(sidecar_path(model)) as f:
            return json.load(f)
    return None


def sidecar_path(path):
    """``hmsa_float32.tflite`` -> ``hmsa_float32.metadata.json``."""
    path = os.fspath(path)
    return (path[: -len(".tflite")] if path.endswith(".tflite") else path) + ".metadata.json"


def io_summary(model_content):
    """``{"inputs": [...], "outputs": [...]}`` with name, dtype, shape signature and
    quantization of the file's signature tensors (read back from the converted file)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(model_content))

    def describe(d):
        q = d.get("quantization", (0.0, 0))
        return {
            "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(x) for x in d.get("shape_signature", d["shape"])],
            "quantization": {"scale": float(q[0]), "zero_point": int(q[1])} if q and q[0] else None,
        }

    runner = interpreter.get_signature_runner()
    inputs = {k: describe(v) for k, v in runner.get_input_details().items()}
    outputs = {k: describe(v) for k, v in runner.get_output_details().items()}
    return {"inputs": inputs, "outputs": outputs}


def file_metadata(module, variant, content, fixed_size=None, float_ops=(), calibration=None):
    """The metadata of one ``.tflite`` file: the module's plus variant and interface."""
    meta = dict(module.metadata())
    meta.update(
        variant=variant,
        fixed_size=list(fixed_size) if fixed_size else None,
        float_ops=list(float_ops),
        calibration=calibration,
        **io_summary(content),
    )
    return meta


def write_tflite(path, module, variant, content, fixed_size=None, float_ops=(), calibration=None):
    """Writes ``content`` with its metadata embedded, and the ``.metadata.json`` sidecar.
    Returns (final bytes, metadata)."""
    meta = file_metadata(module, variant, content, fixed_size, float_ops, calibration)
    content = embed_metadata(content, meta)
    with open(path, "wb") as f:
        f.write(content)
    with open(sidecar_path(path), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return content, meta


# ----------------------------------------------------------------------------- reading
class TFLiteSegmenter:
    """Adapts a ``.tflite`` file to the ``segment`` interface of :class:`hmsa_keras.HMSA`
    for :func:`hmsa_keras.evaluation.evaluate` (``hmsa-eval --tflite``).

    The chain, flip and classes come from the file's embedded metadata (or its
    ``.metadata.json``): ``scales``/``flip``/``num_classes``/``class_names`` (None when
    the file has none). ``segment`` takes normalised float images ``[B, H, W, 3]`` (as the
    evaluation pipeline yields them), turns them back into uint8 pixels and runs LiteRT
    image by image (inside ``tf.numpy_function``, so it also works in a ``tf.function``);
    the ``scales``/``flip`` arguments are ignored (fixed in the file).
    """

    def __init__(self, path, num_threads=2):
        from hmsa_keras.export.litert_runner import LiteRTSegmenter

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r}: no such .tflite file")
        self.path = path
        self.runner = LiteRTSegmenter(path, num_threads=num_threads)
        meta = self.runner.metadata or {}
        self.scales = tuple(float(s) for s in meta["scales"]) if meta.get("scales") else None
        self.flip = bool(meta.get("flip", False)) if meta else None
        self.num_classes = meta.get("num_classes")
        self.class_names = meta.get("class_names")
        self.variant = meta.get("variant")

    def _classes(self, images):
        from hmsa_keras.data.normalization import denormalize

        pixels = denormalize(images)
        if not len(pixels):
            return np.zeros(pixels.shape[:3], np.int32)
        return np.stack([self.runner.segment(p)["classes"] for p in pixels]).astype(np.int32)

    def segment(self, images, scales=None, flip=False, **unused):
        images = tf.convert_to_tensor(images, tf.float32)
        classes = tf.numpy_function(self._classes, [images], tf.int32, stateful=True)
        classes.set_shape(images.shape[:3])
        return {"classes": classes}


__all__ = [
    "Int8Quantizer",
    "OUTPUT_SETS",
    "TFLiteSegmenter",
    "VARIANTS",
    "convert",
    "embed_metadata",
    "io_summary",
    "make_converter",
    "non_builtin_ops",
    "operator_codes",
    "read_metadata",
    "sidecar_path",
    "write_tflite",
]
