"""SavedModel export for TensorFlow Serving, and the reader that evaluates one.

Signatures (all normalise inside the graph and return results at input resolution):

- ``serving_default(images)`` -> ``classes`` int32 ``[B, H, W]``. The scale chain and
  flip-TTA are fixed at export time.
- ``with_details(images)`` -> ``classes``, ``probabilities`` float32 ``[B, H, W, K]``
  (softmax of the fused logits), ``attention`` float32 ``[B, H, W, S]`` (sigmoid
  attention of every scale, ascending scale order, resized to the input; from the
  un-mirrored pass when flip is on) and ``scales`` float32 ``[S]`` (the order of the
  ``attention`` channels).
- ``segment_with_scales(images, scales)`` -> ``classes``, ``probabilities``: the scale
  chain is a float32 1-D tensor given at request time (any length, any order, values
  > 0 and distinct). The hierarchical chain runs in a ``tf.while_loop`` over the scales
  sorted descending, with a shape-invariant ``[B, None, None, K]`` prediction. Only for
  models with ``fusion="hierarchical"`` (the HMSA method); flip as chosen at export.
- ``serving_encoded(image_bytes)`` -> ``classes`` int32 ``[B, H, W]``: ``image_bytes`` is
  a DT_STRING ``[B]`` of PNG/JPEG (or GIF/BMP) files, decoded in the graph
  (``tf.io.decode_image``, 3 channels; all images of one request share a size). Over
  REST each element is sent as ``{"b64": "<base64>"}``. TensorFlow's decoders do not
  apply the EXIF orientation: the clients in ``export/`` re-encode such files upright.
- ``serving_encoded_png(image_bytes)`` -> ``classes_png_bytes`` DT_STRING ``[B]``: the
  class map of every image as a single-channel PNG (8-bit for up to 256 classes, else
  16-bit). The ``_bytes`` suffix makes TF Serving's REST API return it base64-encoded
  (``{"b64": ...}``).

The input contract is the one of :func:`hmsa_keras.inference.segment_image` for batches:
``images`` is uint8 ``[B, H, W, 3]`` RGB (declared ``[None, None, None, 3]``; the dtype
and, with TensorFlow's loader, the shape are checked by the signature; TF Serving does not
check fed shapes, so the graph asserts rank 4 and 3 channels too, naming ``images``).
Every image must be at least ``MIN_SIDE`` pixels per side at the smallest scale of the
chain (:func:`hmsa_keras.conventions.min_size_problem`): smaller ones fail with that
function's one-line message. An empty batch ``[0, H, W, 3]`` returns empty outputs
(``classes`` ``[0, H, W]`` ...).

Layout for TF Serving (:func:`export_serving`): ``<dir>/<name>/<version>/`` with
``assets.extra/tf_serving_warmup_requests`` (PredictionLog records, one per signature:
:mod:`hmsa_keras.export.grpc_client` writes their protobuf wire format) and
``hmsa_export.json`` (chain, classes, normalisation, signatures, the ops of the graph).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref

import tensorflow as tf

from hmsa_keras import conventions
from hmsa_keras.data.normalization import normalize
from hmsa_keras.models import fusion as F

log = logging.getLogger("hmsa_keras")

IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
ENCODED_SPEC = tf.TensorSpec([None], tf.string, name="image_bytes")
SCALES_SPEC = tf.TensorSpec([None], tf.float32, name="scales")
METADATA_FILE = "hmsa_export.json"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
FORMAT_VERSION = 2


def check_images(images):
    """Runtime checks of a uint8 batch: rank 4, 3 channels, height and width > 0 (unless
    the batch is empty). Returns
    the batch with a static ``[None, None, None, 3]`` shape (the asserts run first)."""
    rank = tf.rank(images)
    padded = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], axis=0)[:4]
    sizes_ok = tf.logical_or(
        tf.equal(padded[0], 0), tf.reduce_all(padded[1:3] > 0)
    )  # empty batch: any
    ok = tf.logical_and(tf.equal(rank, 4), tf.logical_and(tf.equal(padded[3], 3), sizes_ok))
    check = tf.debugging.Assert(
        ok,
        [
            "`images` must be a 4-D uint8 batch [batch, height, width, 3] of RGB pixels with "
            "height, width > 0; got shape",
            tf.shape(images),
        ],
        summarize=8,
    )
    with tf.control_dependencies([check]):
        shape = tf.shape(images)
        # reshape rather than tf.ensure_shape: EnsureShape can fail at function
        # instantiation, before the assert gets to explain the problem
        return tf.reshape(images, tf.stack([shape[0], shape[1], shape[2], 3]))


def _g(value):
    """``f"{value:g}"`` of a float32 scalar tensor (``tf.strings.as_string(shortest=True)``
    writes 1.0 as ``1`` and 0.5 as ``0.5``, like Python's ``g``)."""
    return tf.strings.as_string(value, shortest=True)


def min_size_message(height, width, scale, name="images"):
    """The message of :func:`hmsa_keras.conventions.check_min_size` as a string tensor, for
    int32 ``height``/``width`` and a float32 ``scale`` (the smallest of the chain); sizes at
    a scale are ``floor(side * scale)`` in float32, as the models compute them."""
    hw = tf.cast(tf.stack([height, width]), tf.float32)
    scaled = tf.maximum(tf.cast(tf.floor(hw * scale), tf.int32), 1)  # conventions.scaled_side
    # conventions.min_input_side: the first side among ceil(MIN / s) - 1 .. + 1 that reaches MIN
    first = tf.math.ceil(conventions.MIN_SIDE / scale) - 1.0
    candidates = tf.maximum(first + tf.constant([0.0, 1.0, 2.0]), 1.0)
    reaches = tf.floor(candidates * scale) >= conventions.MIN_SIDE
    need = tf.cast(tf.gather(candidates, tf.argmax(tf.cast(reaches, tf.int32))), tf.int32)
    s = _g(scale)
    return tf.strings.join(
        [
            name,
            ": image of ",
            tf.strings.as_string(height),
            "x",
            tf.strings.as_string(width),
            " (HxW) is ",
            tf.strings.as_string(scaled[0]),
            "x",
            tf.strings.as_string(scaled[1]),
            " at scale ",
            s,
            f": every side must be at least {conventions.MIN_SIDE} pixels at every scale of the "
            "chain, i.e. at least ",
            tf.strings.as_string(need),
            " pixels at scale ",
            s,
            "; use a larger image or drop scale ",
            s,
        ]
    )


def check_min_size(images, scales, name="images"):
    """Asserts the minimum-size rule (:func:`hmsa_keras.conventions.min_size_problem`) for a
    checked batch ``[B, H, W, 3]`` and a chain (Python tuple or 1-D float32 tensor); empty
    batches pass. Returns ``images`` (after the assert)."""
    shape = tf.shape(images)
    scale = tf.reduce_min(tf.cast(tf.reshape(scales, [-1]), tf.float32))
    scaled = tf.maximum(tf.cast(tf.floor(tf.cast(shape[1:3], tf.float32) * scale), tf.int32), 1)
    ok = tf.logical_or(tf.equal(shape[0], 0), tf.reduce_min(scaled) >= conventions.MIN_SIDE)
    # the message is built only when the check fails (tf.cond), it costs nothing otherwise
    message = tf.cond(
        ok, lambda: tf.constant(""), lambda: min_size_message(shape[1], shape[2], scale, name)
    )
    check = tf.debugging.Assert(ok, [message])
    with tf.control_dependencies([check]):
        return tf.identity(images)


_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")


def decode_images(image_bytes):
    """DT_STRING ``[N]`` of encoded images -> uint8 ``[N, H, W, 3]`` (``tf.io.decode_image``,
    16-bit PNGs scaled to 8 bits). Asserts that every element starts like a PNG/JPEG/GIF/BMP
    file and that all images of the batch share a size. ``N == 0`` gives ``[0, 0, 0, 3]``."""
    image_bytes = tf.reshape(image_bytes, [-1])
    head = tf.strings.substr(image_bytes, 0, 4)
    known = tf.reduce_any(
        tf.stack([tf.strings.substr(head, 0, len(m)) == m for m in _MAGIC]), axis=0
    )
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        [
            "`image_bytes` must hold encoded PNG or JPEG files (GIF/BMP also work); "
            "these elements are not (1 = bad):",
            tf.cast(tf.logical_not(known), tf.int32),
        ],
        summarize=64,
    )

    def decode(data):
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

    def none():
        return tf.zeros([0, 0, 0, 3], tf.uint8)

    def one():
        return decode(image_bytes[0])[None]

    def many():
        shapes = tf.map_fn(lambda b: tf.shape(decode(b)), image_bytes, fn_output_signature=tf.int32)
        same = tf.debugging.Assert(
            tf.reduce_all(tf.equal(shapes, shapes[0])),
            [
                "`image_bytes`: the images of one request must share a size "
                "(send one image per request); got [height, width, channels] =",
                shapes,
            ],
            summarize=64,
        )
        with tf.control_dependencies([same]):
            return tf.map_fn(
                decode, image_bytes, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
            )

    with tf.control_dependencies([check]):
        n = tf.size(image_bytes)
        return tf.cond(tf.equal(n, 0), none, lambda: tf.cond(tf.equal(n, 1), one, many))


def encode_class_maps(classes, num_classes):
    """int32 ``[N, H, W]`` -> DT_STRING ``[N]`` single-channel PNGs (uint8 for up to 256
    classes, else uint16)."""
    dtype = tf.uint8 if num_classes <= 256 else tf.uint16
    return tf.map_fn(
        lambda c: tf.io.encode_png(tf.cast(c, dtype)[..., None]),
        classes,
        fn_output_signature=tf.TensorSpec([], tf.string),
    )


def dynamic_hierarchical(network, x, scales, num_classes):
    """Hierarchical chain (:func:`hmsa_keras.models.fusion.hierarchical`) for a 1-D scales
    tensor, with ``tf.while_loop``. ``x``: normalised float batch. Returns fused logits at
    the input size."""
    scales = tf.sort(tf.reshape(scales, [-1]), direction="DESCENDING")
    n = tf.shape(scales)[0]

    def run(s):
        out = network(F.resize(x, F.scaled_size(x, s)), training=False)
        return out["logits"], out["attention"]

    pred0, _ = run(scales[0])

    def body(i, pred):
        return i + 1, F.hierarchical_step(pred, *run(scales[i]), scales[i])

    _, pred = tf.while_loop(
        lambda i, _: i < n,
        body,
        (tf.constant(1), pred0),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, None, num_classes])),
    )
    return F.resize(pred, tf.shape(x)[1:3])


def check_scales(scales):
    scales = tf.reshape(scales, [-1])
    ok = tf.debugging.Assert(
        tf.logical_and(tf.size(scales) > 0, tf.reduce_all(scales > 0.0)),
        ["`scales` must be a non-empty 1-D float32 tensor of positive scales; got", scales],
    )
    distinct = tf.debugging.Assert(
        tf.equal(tf.size(tf.unique(scales)[0]), tf.size(scales)),
        ["`scales` must be distinct; got", scales],
    )
    with tf.control_dependencies([ok, distinct]):
        return tf.identity(scales)


def _unless_empty(images, run, empty):
    """``run(images)``, or ``empty(images)`` for a batch of 0 images (the networks cannot
    run on an empty batch: their BatchNorm/attention shapes would not broadcast)."""
    return tf.cond(tf.shape(images)[0] > 0, lambda: run(images), lambda: empty(images))


class _Untracked:
    """Holds an object out of sight of TensorFlow's object-graph tracking."""

    def __init__(self, obj):
        self.obj = obj


class HMSAExportModule(tf.Module):
    """Wraps a float32 :class:`hmsa_keras.HMSA` model with export-time ``scales``/``flip``.

    One traced graph, :meth:`core` (uint8 ``[B, H, W, 3]`` -> classes, probabilities,
    attention, scales), is shared by the SavedModel signatures (which add the input
    checks) and the TFLite functions (which do not: Assert is no TFLite builtin).
    The functions are kept off the tracked attributes on purpose: ``tf.saved_model.save``
    would re-trace every tracked ``tf.function`` (minutes for a multi-scale model).
    ``class_names``/``colors`` only go into the metadata.
    """

    def __init__(self, model, scales=(0.5, 1.0, 2.0), flip=False, class_names=None, colors=None):
        super().__init__(name="hmsa_export")
        # Track only the weights: a tracked Keras model makes tf.saved_model.save walk
        # and trace all of Keras' own functions.
        self._model_ref = _Untracked(model)
        # the tf.Variables themselves (like keras.export.ExportArchive): tracked KerasVariable
        # wrappers are not frozen by the TFLite converter (left as resource variables)
        self.model_variables = [getattr(v, "value", v) for v in model.weights]
        self.scales = conventions.parse_scales(scales, "scales")
        self.flip = bool(flip)
        self.num_classes = int(model.num_classes)
        self.hierarchical = model.fusion == "hierarchical"
        self.class_names = (
            list(class_names) if class_names else [f"class_{i}" for i in range(self.num_classes)]
        )
        self.colors = [list(map(int, c)) for c in (colors or [])]
        self._fns = _Untracked({})

    @property
    def model(self):
        return self._model_ref.obj

    def _function(self, name, build):
        cache = self._fns.obj
        if name not in cache:
            cache[name] = build()
        return cache[name]

    # -------------------------------------------------------------- shared graph
    def segment(self, images):
        """Segmentation of a uint8 batch with the export-time chain (eager or traced):
        ``classes``, ``probabilities``, ``attention`` [B, H, W, S], ``scales``."""
        out = self.model.segment(normalize(images), self.scales, self.flip, return_details=True)
        return {
            "classes": out["classes"],
            "probabilities": tf.nn.softmax(out["logits"], axis=-1),
            "attention": tf.concat([out["attention"][s] for s in self.scales], axis=-1),
            "scales": tf.constant(self.scales, tf.float32),
        }

    def empty(self, images):
        """The outputs of :meth:`segment` for a batch of no images (shapes ``[0, H, W, ...]``)."""
        shape = tf.shape(images)
        return {
            "classes": tf.zeros(shape[:3], tf.int32),
            "probabilities": tf.zeros(tf.concat([shape[:3], [self.num_classes]], 0), tf.float32),
            "attention": tf.zeros(tf.concat([shape[:3], [len(self.scales)]], 0), tf.float32),
            "scales": tf.constant(self.scales, tf.float32),
        }

    def core(self):
        """``tf.function`` of :meth:`segment`, traced once per input shape signature (a
        method, not a property: the saver collects function-valued attributes)."""
        return self._function("core", lambda: tf.function(self.segment, autograph=False))

    def dynamic_core(self, images, scales):
        x = normalize(images)
        logits = dynamic_hierarchical(self.model.network, x, scales, self.num_classes)
        if self.flip:
            mirrored = dynamic_hierarchical(
                self.model.network, tf.reverse(x, axis=[2]), scales, self.num_classes
            )
            logits = 0.5 * (logits + tf.reverse(mirrored, axis=[2]))
        return {
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    # -------------------------------------------------------------- signatures
    def signatures(self):
        """``{name: concrete function}`` for ``tf.saved_model.save``."""

        def build():
            core = self.core().get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.uint8))

            def checked(images):
                return check_min_size(check_images(images), self.scales)

            def details(images):
                return _unless_empty(checked(images), core, self.empty)

            def classes(images):
                return details(images)["classes"]

            @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
            def serving_default(images):
                return {"classes": classes(images)}

            @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
            def with_details(images):
                return details(images)

            @tf.function(input_signature=[ENCODED_SPEC], autograph=False)
            def serving_encoded(image_bytes):
                return {"classes": classes(decode_images(image_bytes))}

            @tf.function(input_signature=[ENCODED_SPEC], autograph=False)
            def serving_encoded_png(image_bytes):
                return {
                    "classes_png_bytes": encode_class_maps(
                        classes(decode_images(image_bytes)), self.num_classes
                    )
                }

            sigs = {
                "serving_default": serving_default.get_concrete_function(),
                "with_details": with_details.get_concrete_function(),
                "serving_encoded": serving_encoded.get_concrete_function(),
                "serving_encoded_png": serving_encoded_png.get_concrete_function(),
            }
            if self.hierarchical:

                @tf.function(input_signature=[IMAGES_SPEC, SCALES_SPEC], autograph=False)
                def segment_with_scales(images, scales):
                    scales = check_scales(scales)
                    images = check_min_size(check_images(images), scales)
                    return _unless_empty(
                        images,
                        lambda x: self.dynamic_core(x, scales),
                        lambda x: {
                            k: v
                            for k, v in self.empty(x).items()
                            if k in ("classes", "probabilities")
                        },
                    )

                sigs["segment_with_scales"] = segment_with_scales.get_concrete_function()
            return sigs

        return self._function("signatures", build)

    # -------------------------------------------------------------- TFLite
    def tflite_function(self, fixed_size=None, batch=1, outputs=("classes", "probabilities")):
        """Concrete function for TFLite: uint8 ``[batch, H, W, 3]`` (H, W dynamic unless
        ``fixed_size`` = (h, w)) -> ``classes`` int32 ``[batch, H, W]`` and (unless
        ``outputs`` leaves it out) ``probabilities`` float32 ``[batch, H, W, K]``; no asserts."""
        h, w = fixed_size if fixed_size else (None, None)
        outputs = tuple(outputs)

        def build():
            core = self.core().get_concrete_function(tf.TensorSpec([batch, h, w, 3], tf.uint8))

            @tf.function(
                input_signature=[tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images")],
                autograph=False,
            )
            def segment(images):
                out = core(images)
                return {k: out[k] for k in outputs}

            return segment.get_concrete_function()

        return self._function(f"tflite_{batch}_{h}_{w}_{outputs}", build)

    def tflite_saved_model(self, fixed_size=None, outputs=("classes", "probabilities")):
        """A temporary SavedModel whose ``serving_default`` is :meth:`tflite_function`, the
        input of ``TFLiteConverter.from_saved_model`` (through a SavedModel the variables
        are frozen into constants). Written once per size and removed with the module."""
        outputs = tuple(outputs)

        def build():
            path = tempfile.mkdtemp(prefix="hmsa_tflite_")
            weakref.finalize(self, shutil.rmtree, path, True)
            fn = self.tflite_function(fixed_size=fixed_size, batch=1, outputs=outputs)
            tf.saved_model.save(self, path, signatures={"serving_default": fn})
            return path

        return self._function(f"tflite_saved_model_{fixed_size}_{outputs}", build)

    def metadata(self):
        """What a deployment needs to know, written as ``hmsa_export.json`` (and embedded
        in the TFLite files): chain, classes, input contract, normalisation (in the graph)."""
        return {
            "format": "hmsa_keras export",
            "format_version": FORMAT_VERSION,
            "scales": list(self.scales),
            "flip": self.flip,
            "num_classes": self.num_classes,
            "fusion": self.model.fusion,
            "class_names": self.class_names,
            "colors": self.colors,
            "input": {
                "dtype": "uint8",
                "shape": "[batch, height, width, 3]",
                "channels": "RGB",
                "min_side": conventions.MIN_SIDE,
                "min_size_rule": "floor(side * scale) >= min_side for every side and scale",
            },
            "normalization": {
                "inside_graph": True,
                "formula": "(pixel / 255 - mean) / std",
                "mean": list(conventions.MEAN),
                "std": list(conventions.STD),
            },
            "tensorflow": tf.__version__,
        }


def as_float32(model):
    """Returns ``model`` if it computes in float32, else a float32 rebuild with the same
    weights (mixed-precision checkpoints: TFLite cannot convert them)."""
    import keras

    from hmsa_keras.models import HMSA

    dtypes = {
        layer.compute_dtype
        for layer in model.network._flatten_layers()
        if hasattr(layer, "compute_dtype")
    }
    if dtypes <= {"float32"}:
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        config = {k: v for k, v in model.get_config().items() if k != "dtype"}
        rebuilt = HMSA.from_config(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def graph_ops(export_dir):
    """Sorted op types of a SavedModel's graph and functions, and its GraphDef producer
    version (what decides which TensorFlow/TF Serving versions can load it)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    graph = sm.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    ops -= {fn.signature.name for fn in graph.library.function}  # calls of library functions
    return sorted(ops), int(graph.versions.producer)


def export_saved_model(
    model,
    export_dir,
    scales=(0.5, 1.0, 2.0),
    flip=False,
    module=None,
    class_names=None,
    colors=None,
):
    """Writes the SavedModel (see module docstring) of ``model`` (or of a ready ``module``)
    and its ``hmsa_export.json``; returns ``export_dir``."""
    module = module or HMSAExportModule(as_float32(model), scales, flip, class_names, colors)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    meta = module.metadata()
    ops, producer = graph_ops(export_dir)
    meta.update(signatures=describe_signatures(module), graph_ops=ops, graph_def_producer=producer)
    with open(os.path.join(export_dir, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return export_dir


def describe_signatures(module):
    """``{signature: {"inputs": {name: "dtype shape"}, "outputs": {...}}}``."""

    def spec(s):
        dims = (
            "?" if s.shape.rank is None else ",".join("?" if d is None else str(d) for d in s.shape)
        )
        return f"{s.dtype.name} [{dims}]"

    out = {}
    for name, fn in sorted(module.signatures().items()):
        args, kwargs = fn.structured_input_signature
        inputs = {**{a.name: a for a in args}, **kwargs}
        out[name] = {
            "inputs": {k: spec(v) for k, v in inputs.items()},
            "outputs": {k: spec(v) for k, v in fn.structured_outputs.items()},
        }
    return out


# ------------------------------------------------------------------ TF Serving layout
def warmup_requests(module, size=(64, 64), name="hmsa", seed=0):
    """``[(signature, {input: numpy array})]`` for the warm-up file: one request per
    signature, one image of ``size`` = (h, w) (a smooth random picture; PNG for the
    encoded signatures)."""
    import io

    import numpy as np
    from PIL import Image

    h, w = size
    conventions.check_min_size(h, w, module.scales, name="warm-up size")
    rng = np.random.RandomState(seed)
    small = rng.randint(0, 256, (max(h // 16, 1), max(w // 16, 1), 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    png = np.array([buf.getvalue()], dtype=object)
    requests = []
    for signature in sorted(module.signatures()):
        if signature.startswith("serving_encoded"):
            requests.append((signature, {"image_bytes": png}))
        elif signature == "segment_with_scales":
            requests.append(
                (
                    signature,
                    {"images": image[None], "scales": np.asarray(module.scales, np.float32)},
                )
            )
        else:
            requests.append((signature, {"images": image[None]}))
    return requests


def write_warmup_file(export_dir, requests, model_name="hmsa"):
    """Writes ``assets.extra/tf_serving_warmup_requests``: a TFRecord file of serialized
    ``tensorflow.serving.PredictionLog`` messages (``predict_log.request`` = a
    PredictRequest naming the model and signature), the format TF Serving reads at load
    (``--enable_model_warmup``, on by default). Returns the file's path."""
    from hmsa_keras.export.grpc_client import encode_prediction_log

    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            writer.write(encode_prediction_log(model_name, signature, inputs))
    return path


BATCHING_PARAMETERS = """\
# TF Serving batching (tensorflow_model_server --enable_batching
#   --batching_parameters_file=batching_parameters.txt), written by hmsa-export.
# Requests are concatenated along the batch axis, so only requests whose images share a
# height and width can form one batch; pad_variable_length_inputs would pad with zeros and
# change the segmentation of the padded images: keep it off and send one size per model.
# On a CPU server batching mostly adds latency (the convolutions already use every core);
# it pays on GPUs. max_batch_size bounds the memory of one batch (512x1024, chain 0.5,1,2:
# about 0.3 GB of activations per image for MobileNetV2).
max_batch_size { value: 4 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 16 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 1
allowed_batch_sizes: 2
allowed_batch_sizes: 4
"""


def export_serving(
    model,
    base_dir,
    name="hmsa",
    version=1,
    scales=(0.5, 1.0, 2.0),
    flip=False,
    module=None,
    class_names=None,
    colors=None,
    warmup_size=(64, 64),
):
    """The TF Serving layout: the SavedModel in ``<base_dir>/<name>/<version>/`` with its
    warm-up requests (``warmup_size`` = (h, w), None: no warm-up file), plus
    ``<base_dir>/models.config`` (a ``--model_config_file`` for this model) and
    ``<base_dir>/batching_parameters.txt``. Returns the version directory."""
    if not str(name) or os.sep in str(name):
        raise ValueError(f"serving name must be a plain folder name, got {name!r}")
    if int(version) < 1:
        raise ValueError(f"serving version must be an integer >= 1, got {version!r}")
    module = module or HMSAExportModule(as_float32(model), scales, flip, class_names, colors)
    path = os.path.join(base_dir, str(name), str(int(version)))
    if os.path.isdir(path):
        shutil.rmtree(path)
    export_saved_model(None, path, module=module)
    if warmup_size:
        write_warmup_file(path, warmup_requests(module, warmup_size), model_name=name)
    base_path = os.path.abspath(os.path.join(base_dir, str(name)))
    with open(os.path.join(base_dir, "models.config"), "w") as f:
        f.write(
            f"# tensorflow_model_server --model_config_file=models.config "
            f"(written by hmsa-export;\n"
            f"# base_path must be the absolute path the server sees, "
            f"e.g. /models/{name} in Docker)\n"
            f'model_config_list {{\n  config {{\n    name: "{name}"\n    base_path: "{base_path}"\n'
            f'    model_platform: "tensorflow"\n  }}\n}}\n'
        )
    with open(os.path.join(base_dir, "batching_parameters.txt"), "w") as f:
        f.write(BATCHING_PARAMETERS)
    return path


def resolve_saved_model_dir(path):
    """The SavedModel directory ``path`` names: ``path`` itself (it holds ``saved_model.pb``),
    or the highest numbered version under a TF Serving model base path (``<dir>/<name>``, or
    ``<dir>`` holding one model folder). Raises FileNotFoundError saying what was looked for."""

    def versions(folder):
        found = []
        if os.path.isdir(folder):
            for entry in os.listdir(folder):
                if entry.isdigit() and os.path.isfile(
                    os.path.join(folder, entry, "saved_model.pb")
                ):
                    found.append(int(entry))
        return sorted(found)

    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if found:
        return os.path.join(path, str(found[-1]))
    if os.path.isdir(path):
        models = [d for d in sorted(os.listdir(path)) if versions(os.path.join(path, d))]
        if len(models) == 1:
            return os.path.join(path, models[0], str(versions(os.path.join(path, models[0]))[-1]))
    raise FileNotFoundError(
        f"{path!r} is not a SavedModel directory (no saved_model.pb), nor a TF Serving model "
        "folder with numbered versions (<name>/<version>/saved_model.pb)"
    )


# ------------------------------------------------------------------ reading
def read_metadata(export_dir):
    """The export's ``hmsa_export.json`` as a dict, or None when it has none."""
    meta_path = os.path.join(export_dir, METADATA_FILE)
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path) as f:
        return json.load(f)


def _to_uint8(images):
    """Normalised float images -> uint8 pixels (exact inverse of normalisation, rounded)."""
    from hmsa_keras.conventions import MEAN, STD

    pixels = (images * tf.constant(STD, tf.float32) + tf.constant(MEAN, tf.float32)) * 255.0
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


class SavedModelSegmenter:
    """Adapts an exported SavedModel (``serving_default``: uint8 ``images`` -> int32
    ``classes`` [+ ``probabilities``]) to the ``segment`` interface of :class:`HMSA`.

    ``path``: the SavedModel, or a TF Serving model folder (its highest version; see
    :func:`resolve_saved_model_dir`). The scale chain and flip are baked into the export:
    ``scales``, ``flip``, ``class_names`` are read from the export's ``hmsa_export.json``
    (None when it is absent); those passed to :meth:`segment` are ignored (the CLI says so).
    """

    def __init__(self, path: str, signature: str = "serving_default"):
        path = resolve_saved_model_dir(path)
        self.path = path
        self.scales, self.flip, self.class_names = None, None, None
        meta = read_metadata(path)
        if meta:
            self.scales, self.flip = tuple(float(s) for s in meta["scales"]), bool(meta["flip"])
            self.class_names = meta.get("class_names")
        self.module = tf.saved_model.load(path)
        if signature not in self.module.signatures:
            raise ValueError(
                f"{path}: no signature {signature!r}; it has {sorted(self.module.signatures)}"
            )
        self.fn = self.module.signatures[signature]
        inputs = self.fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(
                f"{path}: signature {signature!r} takes {sorted(inputs)}; expected one image input"
            )
        self.input_name = next(iter(inputs))
        self.input_dtype = inputs[self.input_name].dtype
        outputs = self.fn.structured_outputs
        if "classes" not in outputs and "probabilities" not in outputs:
            raise ValueError(
                f"{path}: signature {signature!r} returns {sorted(outputs)}; expected 'classes'"
            )
        self.num_classes = meta.get("num_classes") if meta else None
        probs = outputs.get("probabilities")
        if probs is not None and probs.shape.rank == 4 and probs.shape[-1] is not None:
            self.num_classes = int(probs.shape[-1])

    def segment(self, images, scales=None, flip=False, **unused):
        pixels = _to_uint8(images) if self.input_dtype == tf.uint8 else images
        out = self.fn(**{self.input_name: tf.cast(pixels, self.input_dtype)})
        if "classes" in out:
            classes = tf.cast(out["classes"], tf.int32)
            if classes.shape.rank == 4:
                classes = tf.squeeze(classes, -1)
        else:
            classes = tf.argmax(out["probabilities"], axis=-1, output_type=tf.int32)
        result = {"classes": classes}
        if "probabilities" in out:
            result["probabilities"] = out["probabilities"]
        return result
