"""TFLite conversion of an :class:`~hmsa_keras.export.saved_model.HMSAExportModule`.

Every variant takes uint8 RGB ``images`` ``[1, H, W, 3]`` (normalisation is inside the
graph) and returns ``classes`` int32 ``[1, H, W]`` and ``probabilities`` float32
``[1, H, W, K]``; H and W are dynamic (resize the input tensor) unless converted with a
fixed size (GPU/NNAPI delegates need static shapes). Only TFLITE_BUILTINS are allowed:
Flex (SELECT_TF_OPS) ops are refused at conversion and checked for afterwards.

Variants:

- ``float32``: no quantization.
- ``float16``: float16 weights (dequantized at load on CPU, native on GPU delegates).
- ``dynamic_int8``: int8 weights, float activations (dynamic-range quantization).
- ``full_int8``: int8 weights and activations, calibrated on a representative dataset
  (training crops of the run). The uint8 pixel input and the int32 class output are not
  float tensors, so they stay as they are; ``probabilities`` is dequantized to float32.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

VARIANTS = ("float32", "float16", "dynamic_int8", "full_int8")


def convert(module, variant, fixed_size=None, representative_images=None):
    """Returns the ``.tflite`` flatbuffer (bytes) of ``module`` for ``variant``.

    ``representative_images``: iterable of uint8 ``[H, W, 3]`` arrays, required for
    ``full_int8`` (resized to ``fixed_size`` when given).
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown TFLite variant {variant!r}; allowed: {VARIANTS}")
    if variant == "full_int8" and representative_images is None:
        raise ValueError("full_int8 needs representative_images (calibration images)")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        module.tflite_saved_model(fixed_size), signature_keys=["serving_default"])
    return _convert(converter, variant, fixed_size, representative_images)


def _convert(converter, variant, fixed_size, representative_images):
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
    return converter.convert()


def _representative(images, fixed_size):
    images = list(images)
    if not images:
        raise ValueError("full_int8 needs at least one calibration image")

    def generate():
        for image in images:
            image = np.asarray(image, np.uint8)
            if fixed_size and tuple(image.shape[:2]) != tuple(fixed_size):
                image = tf.cast(tf.round(tf.clip_by_value(
                    tf.image.resize(tf.cast(image, tf.float32), fixed_size), 0, 255)), tf.uint8).numpy()
            yield [image[None]]

    return generate


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
