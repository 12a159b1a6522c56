"""Convenience functions behind ``import hmsa_keras``."""

from __future__ import annotations

import dataclasses
import os
import weakref

import numpy as np

from hmsa_keras.config import ModelConfig

BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"


def build_model(config: ModelConfig | None = None, **overrides):
    """Builds an :class:`HMSA` model from a :class:`ModelConfig` and/or keyword overrides."""
    from hmsa_keras.models import HMSA

    fields = dataclasses.asdict(config) if config is not None else {}
    fields.update(overrides)
    unknown = set(fields) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"Unknown model option(s) {sorted(unknown)}; allowed: "
                         f"{sorted(f.name for f in dataclasses.fields(ModelConfig))}")
    return HMSA(**fields)


def resolve_model_path(path: str) -> str:
    """A ``.keras`` file, or a training directory (its best model, else its last)."""
    if os.path.isdir(path):
        for name in (BEST_MODEL, LAST_MODEL):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"{path!r} holds no {BEST_MODEL} or {LAST_MODEL}: is it a training directory?")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model at {path!r} (expected a .keras file or a training directory)")
    return path


def load_model(path: str, compile: bool = False):
    """Loads an :class:`HMSA` model from a ``.keras`` file or a training directory."""
    import keras

    import hmsa_keras.models  # noqa: F401  (registers the custom objects)

    return keras.models.load_model(resolve_model_path(path), compile=compile)


_COMPILED = weakref.WeakKeyDictionary()  # model -> {(scales, flip, details): tf.function}


def compiled_segment(model, scales, flip=False, return_details=False):
    """``model.segment`` as a tf.function for any image size, traced once per argument set
    and cached per model (eager multi-scale inference is ~100x slower)."""
    import tensorflow as tf

    from hmsa_keras.models import validate_scales

    key = (validate_scales(scales), bool(flip), bool(return_details))
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        per_model[key] = tf.function(
            lambda images: model.segment(images, key[0], key[1], return_details=key[2]),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    return per_model[key]


def segment_image(model, image, scales=(0.5, 1.0, 2.0), flip=False, return_details=False):
    """Segments one RGB image (uint8 ``[H, W, 3]``) with any chain of scales.

    Returns numpy arrays: ``classes`` ``[H, W]``, ``probabilities`` ``[H, W, K]`` and, with
    ``return_details``, ``attention`` and ``scale_logits`` dicts keyed by scale.
    """
    import tensorflow as tf

    from hmsa_keras.data.normalization import normalize

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
    from hmsa_keras.models.hmsa import check_min_size

    check_min_size((1,) + image.shape, scales)
    out = compiled_segment(model, scales, flip, return_details)(normalize(image[None]))
    result = {"classes": out["classes"][0].numpy(), "probabilities": tf.nn.softmax(out["logits"][0]).numpy()}
    if return_details:
        result["attention"] = {s: a[0, ..., 0].numpy() for s, a in out["attention"].items()}
        result["scale_logits"] = {s: v[0].numpy() for s, v in out["scale_logits"].items()}
    return result
