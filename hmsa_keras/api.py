"""Convenience functions behind ``import hmsa_keras``."""

from __future__ import annotations

import dataclasses
import os

from hmsa_keras.config import ModelConfig

BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"


def build_model(config: ModelConfig | None = None, **overrides):
    """Builds an :class:`HMSA` model from a :class:`ModelConfig` and/or keyword overrides.

    ``num_classes`` is required; an unset ``sync_bn`` means off (one replica). Raises
    ValueError for an unknown option or a missing ``num_classes``; the model's own checks
    (see :class:`hmsa_keras.HMSA`) raise ValueError for bad values."""
    from hmsa_keras.models import HMSA

    fields = dataclasses.asdict(config) if config is not None else {}
    fields.update(overrides)
    if fields.get("num_classes") is None:
        raise ValueError(
            "build_model: num_classes is required (hmsa-train takes it from the dataset)"
        )
    if fields.get("sync_bn") is None:
        fields["sync_bn"] = False  # one replica; the trainer resolves it from the replica count
    unknown = set(fields) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(
            f"Unknown model option(s) {sorted(unknown)}; allowed: "
            f"{sorted(f.name for f in dataclasses.fields(ModelConfig))}"
        )
    return HMSA(**fields)


def resolve_model_path(path: str) -> str:
    """A ``.keras`` file, or a training directory (its best model, else its last)."""
    if os.path.isdir(path):
        for name in (BEST_MODEL, LAST_MODEL):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(
            f"{path!r} holds no {BEST_MODEL} or {LAST_MODEL}: is it a training directory?"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No model at {path!r} (expected a .keras file or a training directory)"
        )
    if not path.endswith(".keras"):
        raise FileNotFoundError(
            f"{path!r} is not a model: expected a .keras file or a training directory"
        )
    return path


def load_model(path: str, compile: bool = False):
    """Loads an :class:`HMSA` model from a ``.keras`` file or a training directory."""
    import keras

    import hmsa_keras.models  # noqa: F401  (registers the custom objects)

    return keras.models.load_model(resolve_model_path(path), compile=compile)
