"""Warm starts (``--init_from``): a model's initial weights taken from another model.

Sources (:func:`resolve_source`):

- a run directory (``best.keras``, else ``last.keras``) or a converted checkpoint directory
  (``model.keras``, the layout ``hmsa-convert`` writes beside its ``config.json``);
- a ``.keras`` file;
- a ``.weights.h5`` file (``model.save_weights``). It stores no layer names, only Keras'
  structural layout, so it is read into the model described by the ``config.json`` beside
  it (a run or converted directory) or, without one, into a model of the target's own
  architecture (the file must then come from such a model).

Matching (:func:`match_weights`): every variable of the target is identified by its
``variable.path`` (``<layer name>/<variable name>``, e.g. ``aspp_1x1_conv/kernel``,
``bn_Conv1/moving_mean``: trainable weights and BatchNorm statistics alike), not by
order. A target variable is loaded when the source has a variable of the same path and
shape; it is skipped (keeps its initial value) when the path is absent from the source
(e.g. the auxiliary head of a model trained without one) or the shape differs (e.g. the
classifier of a model with another number of classes). Nothing matching is an error.

Only weights move: the optimizer, the step and the schedule start fresh. The trainer
applies a warm start only to a new run, never over a run's own checkpoint on resume
(:func:`hmsa_keras.training.trainer.train`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from typing import Dict, List, Optional, Tuple

MODEL_FILES = ("best.keras", "last.keras", "model.keras")  # run directory / converted checkpoint
EXPECTED = (
    "a run directory (best.keras or last.keras), a converted checkpoint directory (model.keras), "
    "a .keras file or a .weights.h5 file"
)


class WarmStartError(ValueError):
    """A ``--init_from`` that cannot be used; the message names the path and what was expected."""


@dataclasses.dataclass
class WarmStartReport:
    """What a warm start loaded.

    Attributes:
      source: the file the weights came from.
      loaded: target variable paths that received the source's values.
      absent: target variable paths the source does not have (kept at their initial values).
      mismatched: ``(path, source shape, target shape)`` of variables whose shapes differ.
      unused: source variable paths the target does not have.
      groups: ``{group: (loaded, total)}`` per part of an HMSA model (trunk, seg_head,
        attention, other); empty for other models.
    """

    source: str
    loaded: List[str]
    absent: List[str]
    mismatched: List[Tuple[str, tuple, tuple]]
    unused: List[str]
    groups: Dict[str, Tuple[int, int]]

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["mismatched"] = [
            {"path": p, "source_shape": list(a), "model_shape": list(b)}
            for p, a, b in self.mismatched
        ]
        out["groups"] = {k: {"loaded": a, "total": b} for k, (a, b) in self.groups.items()}
        return out

    def summary(self, limit: int = 8) -> str:
        """Printable report: counts, then the skipped tensors by name."""
        total = len(self.loaded) + len(self.absent) + len(self.mismatched)
        lines = [
            f"Warm start from {self.source}: loaded {len(self.loaded)} of {total} tensors "
            "(matched by layer name and shape)"
        ]
        if self.groups:
            lines.append(
                "  by part: " + ", ".join(f"{g} {a}/{b}" for g, (a, b) in self.groups.items())
            )
        if self.mismatched:
            shown = [
                f"{p} {tuple(a)} in the source, {tuple(b)} here"
                for p, a, b in self.mismatched[:limit]
            ]
            lines.append(
                f"  skipped, shape differs ({len(self.mismatched)}): "
                + "; ".join(shown)
                + _more(self.mismatched, limit)
            )
        if self.absent:
            lines.append(
                f"  skipped, absent from the source ({len(self.absent)}): "
                + ", ".join(self.absent[:limit])
                + _more(self.absent, limit)
            )
        if self.unused:
            lines.append(
                f"  not used (absent from this model) ({len(self.unused)}): "
                + ", ".join(self.unused[:limit])
                + _more(self.unused, limit)
            )
        return "\n".join(lines)


def _more(items, limit):
    return f" ... and {len(items) - limit} more" if len(items) > limit else ""


def resolve_source(path: str) -> str:
    """The weights file ``path`` designates (see the module docstring).

    Raises:
      WarmStartError: the path does not exist, is a directory without a model file, or a
        file that is neither ``.keras`` nor ``.weights.h5``.
    """
    if not path:
        raise WarmStartError(f"expected {EXPECTED}, got an empty value")
    if os.path.isdir(path):
        for name in MODEL_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise WarmStartError(
            f"{path}: the directory holds none of {', '.join(MODEL_FILES)} (expected {EXPECTED})"
        )
    if not os.path.exists(path):
        raise WarmStartError(f"{path}: no such file or directory (expected {EXPECTED})")
    if not (path.endswith(".keras") or path.endswith(".weights.h5")):
        raise WarmStartError(f"{path}: not a .keras or .weights.h5 file (expected {EXPECTED})")
    return path


def _no_trunk_download(config: dict) -> bool:
    """Sets an HMSA config's trunk ``weights`` to None (the stored weights replace them; a
    path from another machine or 'imagenet' must not be opened or downloaded). Returns
    whether anything changed."""
    inner = config.get("config") if isinstance(config, dict) else None
    if isinstance(inner, dict) and inner.get("weights") not in (None, "", "none", "None"):
        inner["weights"] = None
        return True
    return False


def _load_keras_file(path):
    import keras

    import hmsa_keras.models  # noqa: F401  (registers the custom objects)

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            if not _no_trunk_download(config):
                return keras.saving.load_model(path, compile=False)
            # A copy whose config does not point at trunk weights (same weights file inside).
            with tempfile.TemporaryDirectory() as tmp:
                copy = os.path.join(tmp, "source.keras")
                with zipfile.ZipFile(copy, "w") as out:
                    for item in z.infolist():
                        data = (
                            json.dumps(config)
                            if item.filename == "config.json"
                            else z.read(item.filename)
                        )
                        out.writestr(item, data)
                return keras.saving.load_model(copy, compile=False)
    except WarmStartError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, KeyError, h5py/OSError, ValueError, ...
        raise WarmStartError(
            f"{path}: cannot read the .keras file ({type(exc).__name__}: "
            f"{_first_line(exc)}); expected a model saved by Keras 3 (model.save)"
        ) from None


def _load_weights_file(path, target):
    """A model holding the weights of a ``.weights.h5`` file (see the module docstring)."""
    import h5py

    from hmsa_keras.config import read_config_file

    try:
        with h5py.File(path, "r"):
            pass
    except Exception as exc:
        raise WarmStartError(
            f"{path}: not a readable HDF5 weights file ({_first_line(exc)}); "
            "expected a file written by model.save_weights"
        ) from None
    folder_config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    source = None
    try:
        if os.path.isfile(folder_config):
            model_cfg = read_config_file(folder_config).get("ModelConfig")
            if model_cfg is not None:
                from hmsa_keras.api import build_model

                source = build_model(dataclasses.replace(model_cfg, weights=None))
                how = f"the model of {folder_config}"
        if source is None:
            config = {
                "module": type(target).__module__,
                "class_name": type(target).__name__,
                "config": target.get_config(),
                "registered_name": None,
            }
            _no_trunk_download(config)
            source = type(target).from_config(config["config"])
            how = "a model of this run's architecture (no config.json beside the file)"
    except Exception as exc:
        raise WarmStartError(
            f"{path}: cannot build the model its weights belong to "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    try:
        source.load_weights(path)
    except Exception as exc:
        raise WarmStartError(
            f"{path}: cannot read it into {how} ({type(exc).__name__}: {_first_line(exc)}); "
            "a .weights.h5 file has no layer names, so it must come from that architecture: start "
            "from a .keras file or a run directory to change the architecture"
        ) from None
    return source


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def load_source(path: str, target=None):
    """The source model of a warm start, built with the file's weights (a ``keras.Model``).
    ``target`` (the model to initialise) is needed for a bare ``.weights.h5`` file.
    Raises WarmStartError as :func:`resolve_source`, or for a corrupt or unreadable file."""
    file = resolve_source(path)
    if file.endswith(".weights.h5"):
        if target is None:
            raise WarmStartError(f"{path}: a .weights.h5 file needs the target model")
        return _load_weights_file(file, target)
    return _load_keras_file(file)


def _groups_of(model) -> Dict[int, str]:
    """``{id(variable): group}`` for an HMSA model (the ``--freeze`` groups), else empty."""
    network = getattr(model, "network", None)
    if network is None:
        return {}
    from hmsa_keras.models.hmsa import FREEZE_GROUPS

    out = {}
    for layer in network.layers:
        group = next(
            (g for g, prefixes in FREEZE_GROUPS.items() if layer.name.startswith(prefixes)), "other"
        )
        for v in layer.weights:
            out[id(v)] = group
    return out


def match_weights(target, source, source_name: str = "source") -> WarmStartReport:
    """Copies into ``target`` every variable of ``source`` with the same path and shape.

    Args:
      target, source: built ``keras.Model`` instances (HMSA or any other).
      source_name: how the report names the source.
    Returns:
      a :class:`WarmStartReport` (nothing is assigned when nothing matches).
    Raises:
      ValueError: a variable path occurs twice in ``target`` or ``source`` (matching by
        name would be ambiguous).
    """
    import numpy as np

    def by_path(model, what):
        out = {}
        for v in model.weights:
            if v.path in out:
                raise ValueError(
                    f"{what}: variable path {v.path!r} occurs twice; cannot match by name"
                )
            out[v.path] = v
        return out

    tgt, src = by_path(target, "target model"), by_path(source, source_name)
    loaded, absent, mismatched = [], [], []
    assignments = []
    for path, var in tgt.items():
        other = src.get(path)
        if other is None:
            absent.append(path)
        elif tuple(other.shape) != tuple(var.shape):
            mismatched.append((path, tuple(other.shape), tuple(var.shape)))
        else:
            loaded.append(path)
            assignments.append((var, np.asarray(other.numpy())))
    for var, value in assignments:
        var.assign(value)
    groups = {}
    group_of = _groups_of(target)
    if group_of:
        done = set(loaded)
        for path, var in tgt.items():
            g = group_of.get(id(var), "other")
            a, b = groups.get(g, (0, 0))
            groups[g] = (a + (path in done), b + 1)
        groups = {g: groups[g] for g in ("trunk", "seg_head", "attention", "other") if g in groups}
    unused = [p for p in src if p not in tgt]
    return WarmStartReport(source_name, loaded, absent, mismatched, unused, groups)


def warm_start(model, path: str) -> WarmStartReport:
    """Initialises ``model`` from ``path`` (see the module docstring); returns the report.

    Raises:
      WarmStartError: missing path, unreadable or corrupt file, or no variable of ``model``
        matching the source by layer name and shape. The message names ``path``.
    """
    file = resolve_source(path)
    source = load_source(path, model)
    report = match_weights(model, source, file)
    if not report.loaded:
        example = next(iter(model.weights), None)
        hint = (
            f" (this model expects e.g. {example.path} {tuple(example.shape)})"
            if example is not None
            else ""
        )
        raise WarmStartError(
            f"{path}: no tensor matches this model by layer name and shape"
            f"{hint}; expected the weights of an hmsa_keras model: {EXPECTED}"
        )
    del source
    return report


def write_report(report: WarmStartReport, model_dir: str, requested: Optional[str] = None) -> str:
    """Writes ``model_dir/warm_start.json``; returns its path."""
    path = os.path.join(model_dir, "warm_start.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(report.to_dict(), init_from=requested), f, indent=1)
    shutil.move(path + ".tmp", path)
    return path
