"""Reading checkpoints into ``{name: numpy array}`` state_dicts.

Formats:

- ``.npz``: a bare state_dict held as NumPy arrays (``numpy.savez``); needs no PyTorch.
- ``.pth`` / ``.pt`` / ``.tar`` / ``.ckpt``: a PyTorch ``torch.save`` file holding either
  ``{"state_dict": {...}, ...}`` (the reference's ``utils/misc.py`` snapshots) or a bare
  state_dict (e.g. the ImageNet HRNet file). Needs PyTorch, imported only here
  (``pip install "hmsa_keras[convert]"``). Files are read with
  ``torch.load(weights_only=True)`` (no code runs while unpickling) plus NumPy scalars,
  which the reference stores in its snapshots; ``allow_pickle=True`` lifts that limit for
  files you trust.

A ``module.`` prefix (``torch.nn.DataParallel``) is removed from every key that has it.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")
DATAPARALLEL_PREFIX = "module."


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the architecture (the message says why)."""


def read_checkpoint(path: str, allow_pickle: bool = False):
    """Returns ``(state_dict, metadata)`` of a checkpoint file.

    Args:
      path: a ``.npz`` or PyTorch file (see module docstring).
      allow_pickle: PyTorch files only: unpickle arbitrary objects (trusted files only).
    Returns:
      ``state_dict``: ``{key: np.ndarray}`` with the ``module.`` prefix removed, tensors as
      stored (OIHW convolution kernels, float16/32/64, int64 counters); ``metadata``: the
      other entries of a ``{"state_dict": ...}`` snapshot that are plain str/int/float
      (e.g. ``arch``, ``num_classes``, ``epoch``), else ``{}``.
    Raises:
      CheckpointError: missing, unreadable or truncated file, unknown format, no tensors;
        ImportError (with the install command) when a PyTorch file needs torch.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.endswith(".npz"):
        state, meta = _read_npz(path), {}
    elif path.endswith(TORCH_SUFFIXES):
        state, meta = _read_torch(path, allow_pickle)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format; expected a PyTorch file "
            f"({', '.join(TORCH_SUFFIXES)}) or a NumPy state_dict (.npz)"
        )
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return strip_prefix(state), meta


def strip_prefix(state, prefix=DATAPARALLEL_PREFIX):
    """``state`` with ``prefix`` removed from the keys that start with it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: cannot read as a NumPy .npz state_dict (truncated or not "
            f"an .npz file?): {exc}"
        ) from None


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading PyTorch checkpoints (.pth) needs PyTorch: "
            'pip install "hmsa_keras[convert]" (or convert a .npz state_dict, which '
            "needs no PyTorch)"
        ) from None
    return torch


def _read_torch(path, allow_pickle):
    torch = _import_torch()
    try:
        if allow_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, or a refused global
        refused = not allow_pickle and "weights only" in str(exc).lower()
        hint = (
            (
                " It holds Python objects that weights-only loading refuses: if you trust the "
                "file, pass --allow_pickle."
            )
            if refused
            else ""
        )
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint (truncated or not a "
            f"torch.save file?): {type(exc).__name__}: {first_line}{hint}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        meta = {
            k: v for k, v in obj.items() if isinstance(v, (str, int, float)) and k != "state_dict"
        }
    elif isinstance(obj, dict):
        state, meta = obj, {}
    else:
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a state_dict or {{'state_dict': ...}}"
        )
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} of the state_dict is a {type(value).__name__}, not a tensor"
            )
        tensors[key] = value.detach().cpu().numpy()
    return tensors, meta


def _numpy_globals():
    """NumPy scalar types found in the reference's snapshots (e.g. its ``mean_iu``)."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    found = [scalar, np.dtype]
    found += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    return [g for g in found if g is not None]
