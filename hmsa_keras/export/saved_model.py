"""SavedModel export: a ``tf.Module`` whose signatures take raw uint8 RGB batches.

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

``images`` is declared with unknown shape so that rank and channel errors are caught by
the graph's own asserts, with messages naming ``images``, also in TF Serving (which does
not check fed shapes); the dtype (uint8) is checked by the signature itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref

import tensorflow as tf

from hmsa_keras.data.normalization import normalize
from hmsa_keras.models import fusion as F

IMAGES_SPEC = tf.TensorSpec(None, tf.uint8, name="images")
SCALES_SPEC = tf.TensorSpec([None], tf.float32, name="scales")
METADATA_FILE = "hmsa_export.json"


def check_images(images):
    """Runtime checks of a uint8 batch: rank 4, 3 channels, non-empty. Returns the batch
    with a static ``[None, None, None, 3]`` shape (asserts run before anything reads it)."""
    rank = tf.rank(images)
    padded = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], axis=0)[:4]
    ok = tf.logical_and(tf.equal(rank, 4),
                        tf.logical_and(tf.equal(padded[3], 3), tf.reduce_all(padded[1:3] > 0)))
    check = tf.debugging.Assert(
        ok, ["`images` must be a 4-D uint8 batch [batch, height, width, 3] of RGB pixels with "
             "height, width > 0; got shape", tf.shape(images)], summarize=8)
    with tf.control_dependencies([check]):
        shape = tf.shape(images)
        # reshape rather than tf.ensure_shape: EnsureShape can fail at function
        # instantiation, before the assert gets to explain the problem
        return tf.reshape(images, tf.stack([shape[0], shape[1], shape[2], 3]))


def dynamic_hierarchical(network, x, scales, num_classes):
    """Hierarchical chain (:func:`hmsa_keras.models.fusion.hierarchical`) for a 1-D scales
    tensor, with ``tf.while_loop``. ``x``: normalised float batch. Returns fused logits at
    the input size."""
    scales = tf.sort(tf.reshape(scales, [-1]), direction="DESCENDING")
    n = tf.shape(scales)[0]

    def run(s):
        out = network(F.resize(x, F.scaled_size(x, s)), training=False)
        return out["logits"], out["attention_logits"]

    pred0, _ = run(scales[0])

    def body(i, pred):
        return i + 1, F.hierarchical_step(pred, *run(scales[i]), scales[i])

    _, pred = tf.while_loop(
        lambda i, _: i < n, body, (tf.constant(1), pred0),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, None, num_classes])))
    return F.resize(pred, tf.shape(x)[1:3])


def check_scales(scales):
    scales = tf.reshape(scales, [-1])
    ok = tf.debugging.Assert(
        tf.logical_and(tf.size(scales) > 0, tf.reduce_all(scales > 0.0)),
        ["`scales` must be a non-empty 1-D float32 tensor of positive scales; got", scales])
    distinct = tf.debugging.Assert(
        tf.equal(tf.size(tf.unique(scales)[0]), tf.size(scales)), ["`scales` must be distinct; got", scales])
    with tf.control_dependencies([ok, distinct]):
        return tf.identity(scales)


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
    """

    def __init__(self, model, scales=(0.5, 1.0, 2.0), flip=False):
        super().__init__(name="hmsa_export")
        from hmsa_keras.models import validate_scales

        # Track only the weights: a tracked Keras model makes tf.saved_model.save walk
        # and trace all of Keras' own functions.
        self._model_ref = _Untracked(model)
        # the tf.Variables themselves (like keras.export.ExportArchive): tracked KerasVariable
        # wrappers are not frozen by the TFLite converter (left as resource variables)
        self.model_variables = [getattr(v, "value", v) for v in model.weights]
        self.scales = validate_scales(scales)
        self.flip = bool(flip)
        self.num_classes = int(model.num_classes)
        self.hierarchical = model.fusion == "hierarchical"
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
        return {"classes": out["classes"],
                "probabilities": tf.nn.softmax(out["logits"], axis=-1),
                "attention": tf.concat([out["attention"][s] for s in self.scales], axis=-1),
                "scales": tf.constant(self.scales, tf.float32)}

    def core(self):
        """``tf.function`` of :meth:`segment`, traced once per input shape signature (a
        method, not a property: the saver collects function-valued attributes)."""
        return self._function("core", lambda: tf.function(self.segment, autograph=False))

    def dynamic_core(self, images, scales):
        x = normalize(images)
        logits = dynamic_hierarchical(self.model.network, x, scales, self.num_classes)
        if self.flip:
            mirrored = dynamic_hierarchical(self.model.network, tf.reverse(x, axis=[2]), scales, self.num_classes)
            logits = 0.5 * (logits + tf.reverse(mirrored, axis=[2]))
        return {"classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
                "probabilities": tf.nn.softmax(logits, axis=-1)}

    # -------------------------------------------------------------- signatures
    def signatures(self):
        """``{name: concrete function}`` for ``tf.saved_model.save``."""
        def build():
            dynamic = tf.TensorSpec([None, None, None, 3], tf.uint8)
            core = self.core().get_concrete_function(dynamic)

            @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
            def serving_default(images):
                return {"classes": core(check_images(images))["classes"]}

            @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
            def with_details(images):
                return core(check_images(images))

            sigs = {"serving_default": serving_default.get_concrete_function(),
                    "with_details": with_details.get_concrete_function()}
            if self.hierarchical:
                @tf.function(input_signature=[IMAGES_SPEC, SCALES_SPEC], autograph=False)
                def segment_with_scales(images, scales):
                    return self.dynamic_core(check_images(images), check_scales(scales))

                sigs["segment_with_scales"] = segment_with_scales.get_concrete_function()
            return sigs

        return self._function("signatures", build)

    # -------------------------------------------------------------- TFLite
    def tflite_function(self, fixed_size=None, batch=1):
        """Concrete function for TFLite: uint8 ``[batch, H, W, 3]`` (H, W dynamic unless
        ``fixed_size`` = (h, w)) -> ``classes`` int32 ``[batch, H, W]`` and
        ``probabilities`` float32 ``[batch, H, W, K]``; no asserts."""
        h, w = fixed_size if fixed_size else (None, None)

        def build():
            core = self.core().get_concrete_function(tf.TensorSpec([batch, h, w, 3], tf.uint8))

            @tf.function(input_signature=[tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images")],
                         autograph=False)
            def segment(images):
                out = core(images)
                return {"classes": out["classes"], "probabilities": out["probabilities"]}

            return segment.get_concrete_function()

        return self._function(f"tflite_{batch}_{h}_{w}", build)

    def tflite_saved_model(self, fixed_size=None):
        """A temporary SavedModel whose ``serving_default`` is :meth:`tflite_function`, the
        input of ``TFLiteConverter.from_saved_model`` (through a SavedModel the variables
        are frozen into constants). Written once per size and removed with the module."""
        def build():
            path = tempfile.mkdtemp(prefix="hmsa_tflite_")
            weakref.finalize(self, shutil.rmtree, path, True)
            fn = self.tflite_function(fixed_size=fixed_size, batch=1 if fixed_size else None)
            tf.saved_model.save(self, path, signatures={"serving_default": fn})
            return path

        return self._function(f"tflite_saved_model_{fixed_size}", build)

    def metadata(self):
        return {"scales": list(self.scales), "flip": self.flip, "num_classes": self.num_classes,
                "fusion": self.model.fusion, "input": "uint8 RGB [batch, height, width, 3]",
                "signatures": sorted(self.signatures())}


def as_float32(model):
    """Returns ``model`` if it computes in float32, else a float32 rebuild with the same
    weights (mixed-precision checkpoints: TFLite cannot convert them, REFERENCE s7)."""
    import keras

    from hmsa_keras.models import HMSA

    dtypes = {layer.compute_dtype for layer in model.network._flatten_layers() if hasattr(layer, "compute_dtype")}
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


def export_saved_model(model, export_dir, scales=(0.5, 1.0, 2.0), flip=False, module=None):
    """Writes the SavedModel (see module docstring) of ``model`` (or of a ready ``module``)
    and its ``hmsa_export.json`` (scales, flip, classes, signatures); returns ``export_dir``."""
    module = module or HMSAExportModule(as_float32(model), scales, flip)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    with open(os.path.join(export_dir, METADATA_FILE), "w") as f:
        json.dump(module.metadata(), f, indent=2)
    return export_dir


# ------------------------------------------------------------------ reading
def _to_uint8(images):
    """Normalised float images -> uint8 pixels (exact inverse of normalisation, rounded)."""
    from hmsa_keras.conventions import MEAN, STD

    pixels = (images * tf.constant(STD, tf.float32) + tf.constant(MEAN, tf.float32)) * 255.0
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


class SavedModelSegmenter:
    """Adapts an exported SavedModel (``serving_default``: uint8 ``images`` -> int32
    ``classes`` [+ ``probabilities``]) to the ``segment`` interface of :class:`HMSA`.

    The scale chain and flip are baked into the export: ``scales`` and ``flip`` are read
    from the export's ``hmsa_export.json`` (None when it is absent); those passed to
    :meth:`segment` are ignored (the CLI says so).
    """

    def __init__(self, path: str, signature: str = "serving_default"):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"{path!r} is not a SavedModel directory (no saved_model.pb)")
        self.path = path
        self.scales, self.flip = None, None
        meta_path = os.path.join(path, METADATA_FILE)
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            self.scales, self.flip = tuple(float(s) for s in meta["scales"]), bool(meta["flip"])
        self.module = tf.saved_model.load(path)
        if signature not in self.module.signatures:
            raise ValueError(f"{path}: no signature {signature!r}; it has {sorted(self.module.signatures)}")
        self.fn = self.module.signatures[signature]
        inputs = self.fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"{path}: signature {signature!r} takes {sorted(inputs)}; expected one image input")
        self.input_name = next(iter(inputs))
        self.input_dtype = inputs[self.input_name].dtype
        outputs = self.fn.structured_outputs
        if "classes" not in outputs and "probabilities" not in outputs:
            raise ValueError(f"{path}: signature {signature!r} returns {sorted(outputs)}; expected 'classes'")
        self.num_classes = None
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
