"""Conversion of the reference's released PyTorch checkpoints into hmsa_keras models.

``convert_checkpoint(path, output_dir, dataset)`` reads a checkpoint (``.pth`` with
PyTorch, or a ``.npz`` state_dict without it, :mod:`hmsa_keras.convert.readers`),
recognises the architecture from its keys and shapes, maps every tensor onto an
:class:`hmsa_keras.HMSA` model (:mod:`hmsa_keras.convert.hrnet_ocr`) and writes to
``output_dir``:

- ``best.keras``: the model (so that ``hmsa-eval``/``hmsa-predict``/``hmsa-export
  --model_dir=output_dir`` and warm starts find it);
- ``config.json``: ``{"ModelConfig", "DataConfig", "TrainConfig"}`` as written by training
  runs (:func:`hmsa_keras.config.read_run_config`), with the dataset and the reference's
  evaluation chain (:data:`DATASETS`);
- ``conversion.txt``: one line per tensor mapped (reference key and shape -> Keras weight
  and shape), the tensors not used, and the layers left at their initialisation.

``load_checkpoint(path, dataset)`` does the same in memory and returns the model.

Supported architectures: the reference's HRNetV2 + OCR (``ocrnet.HRNet_Mscale``,
``ocrnet.HRNet``) and its HRNetV2 ImageNet trunk file.
"""

from __future__ import annotations

import logging
import os

from hmsa_keras.convert.readers import CheckpointError, read_checkpoint

__all__ = [
    "CheckpointError",
    "DATASETS",
    "convert_checkpoint",
    "load_checkpoint",
    "prepare",
    "read_checkpoint",
]

log = logging.getLogger("hmsa_keras")

# dataset -> (classes, evaluation chain, flip, eval long edge): the reference's
# scripts/eval_cityscapes.yml (0.5,1.0,2.0) and scripts/eval_mapillary.yml
# (0.25,0.5,1.0,2.0, do_flip, pre_size 2177)
DATASETS = {
    "cityscapes": dict(
        num_classes=19, eval_scales=(0.5, 1.0, 2.0), eval_flip=False, eval_long_edge=None
    ),
    "mapillary": dict(
        num_classes=65, eval_scales=(0.25, 0.5, 1.0, 2.0), eval_flip=True, eval_long_edge=2177
    ),
}
MODEL_FILE = "best.keras"
ALLOWED_ARCHS = ("ocrnet.HRNet_Mscale", "ocrnet.HRNet")


def _check_arch(path, meta):
    arch = meta.get("arch")
    if isinstance(arch, str) and arch.split("network.")[-1] not in ALLOWED_ARCHS:
        raise CheckpointError(
            f"{path}: checkpoint of arch {arch!r}; hmsa-convert reads "
            f"{', '.join(ALLOWED_ARCHS)} and the HRNetV2 ImageNet trunk"
        )


def prepare(path, dataset, num_classes=None, allow_pickle=False):
    """Reads and checks a checkpoint without building anything heavy.

    Returns:
      ``(state, kind, options, unused)``: the state_dict in the reference layout (trunk keys
      under ``backbone.``), the kind (``mscale``/``ocrnet``/``imagenet``), the
      :class:`~hmsa_keras.config.ModelConfig` fields read from it, and the keys not used.
    Raises:
      CheckpointError: unreadable file, wrong architecture, or a class count that differs
        from ``num_classes`` / the dataset's.
      ValueError: unknown dataset.
    """
    from hmsa_keras.convert import hrnet_ocr

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    expected_classes = num_classes or DATASETS[dataset]["num_classes"]
    state, meta = read_checkpoint(path, allow_pickle=allow_pickle)
    _check_arch(path, meta)
    try:
        kind = hrnet_ocr.detect_kind(state)
        # buffers of the loss module the reference keeps as net.criterion (class weights)
        unused = sorted(k for k in state if k.startswith("criterion."))
        state = {k: v for k, v in state.items() if k not in unused}
        if kind == "imagenet":
            state, imagenet_head = hrnet_ocr.imagenet_to_trunk(state)
            unused += imagenet_head
        options = hrnet_ocr.infer_options(state, kind)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    found = options.get("num_classes", expected_classes)
    if found != expected_classes:
        source = (
            f"--num_classes={num_classes}" if num_classes else f"{dataset} has {expected_classes}"
        )
        raise CheckpointError(
            f"{path}: the checkpoint predicts {found} classes (ocr.cls_head.weight "
            f"{list(state['ocr.cls_head.weight'].shape)}) but {source}: wrong --dataset or "
            "--num_classes? (to fine-tune on other classes, convert it with its own dataset, "
            "then warm-start a new model from it with --init_from)"
        )
    if isinstance(meta.get("num_classes"), int) and meta["num_classes"] != found:
        raise CheckpointError(
            f"{path}: its metadata says num_classes={meta['num_classes']} but "
            f"ocr.cls_head.weight has {found} rows: inconsistent file"
        )
    options["num_classes"] = found
    return state, kind, options, unused


def load_checkpoint(path, dataset, num_classes=None, allow_pickle=False):
    """Builds the :class:`~hmsa_keras.HMSA` model a reference checkpoint describes and fills
    it, in memory (:func:`convert_checkpoint` also writes it out).

    Args: as :func:`convert_checkpoint`.
    Returns:
      a dict: ``model``, ``model_config`` (:class:`~hmsa_keras.config.ModelConfig`), ``kind``,
      ``options`` (read from shapes), ``mapped`` (one report line per tensor), ``unused``
      (checkpoint keys not used), ``fresh`` (Keras layers left at their initialisation),
      ``counters`` (BatchNorm ``num_batches_tracked`` keys, not needed).
    Raises:
      CheckpointError: see :func:`prepare`; also missing/unexpected tensors or shape
        mismatches against the architecture read from the checkpoint.
    """
    from hmsa_keras.api import build_model
    from hmsa_keras.config import ModelConfig
    from hmsa_keras.convert import hrnet_ocr

    state, kind, options, unused = prepare(path, dataset, num_classes, allow_pickle)
    model_config = ModelConfig(trunk="hrnetv2_w48", head="ocr", aux_head=True, **options)
    model = build_model(model_config)
    entries = hrnet_ocr.name_map(model.network, kind)
    try:
        hrnet_ocr.check(state, entries)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path} does not match the HRNetV2 + OCR model read from its shapes "
            f"({_describe(options)}): {exc}"
        ) from None
    mapped = hrnet_ocr.assign(state, entries)
    filled = {id(var) for _, var, _, _ in entries}
    fresh = sorted({w.path.rsplit("/", 1)[0] for w in model.network.weights if id(w) not in filled})
    counters = sorted(k for k in state if k.endswith("." + hrnet_ocr.BN_COUNTER))
    return dict(
        model=model,
        model_config=model_config,
        kind=kind,
        options=options,
        mapped=mapped,
        unused=unused,
        fresh=fresh,
        counters=counters,
    )


def convert_checkpoint(
    path, output_dir, dataset, num_classes=None, allow_pickle=False, overwrite=False
):
    """Converts a reference checkpoint into ``output_dir`` (see module docstring).

    Args:
      path: ``.pth`` (needs PyTorch) or ``.npz`` state_dict.
      output_dir: created if needed.
      dataset: ``cityscapes`` or ``mapillary``: class count, evaluation chain and flip.
      num_classes: overrides the dataset's class count (must match the checkpoint's head).
      allow_pickle: read ``.pth`` files holding arbitrary Python objects (trusted files).
      overwrite: replace an existing ``best.keras`` in ``output_dir``.
    Returns:
      the dict of :func:`load_checkpoint` plus ``model_path`` and ``config_path``.
    Raises:
      CheckpointError: see :func:`load_checkpoint` (nothing is written then).
      FileExistsError: ``best.keras`` exists and ``overwrite`` is false.
    """
    from hmsa_keras.config import to_json

    model_path = os.path.join(output_dir, MODEL_FILE)
    if os.path.exists(model_path) and not overwrite:
        raise FileExistsError(f"{model_path} exists; pass --overwrite to replace it")
    result = load_checkpoint(path, dataset, num_classes, allow_pickle)
    os.makedirs(output_dir, exist_ok=True)
    result["model"].save(model_path)
    data_config, train_config = _run_configs(dataset, output_dir)
    config_path = os.path.join(output_dir, "config.json")
    with open(config_path, "w") as f:
        f.write(to_json(result["model_config"], data_config, train_config))
    _write_report(os.path.join(output_dir, "conversion.txt"), path, result)
    log.info(
        "%s: %s checkpoint, %d tensors mapped, %d unused, %d layers at initialisation -> %s",
        path,
        result["kind"],
        len(result["mapped"]),
        len(result["unused"]),
        len(result["fresh"]),
        output_dir,
    )
    return dict(result, model_path=model_path, config_path=config_path)


def _describe(options):
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _run_configs(dataset, output_dir):
    from hmsa_keras.config import DataConfig, TrainConfig

    spec = DATASETS[dataset]
    data = DataConfig(dataset=dataset, eval_long_edge=spec["eval_long_edge"])
    return data, TrainConfig(
        model_dir=output_dir, eval_scales=spec["eval_scales"], eval_flip=spec["eval_flip"]
    )


def _write_report(path, checkpoint, result):
    lines = [
        f"checkpoint: {checkpoint}",
        f"kind: {result['kind']}",
        f"options: {_describe(result['options'])}",
        f"mapped tensors: {len(result['mapped'])}",
        *result["mapped"],
        f"BatchNorm counters not needed: {len(result['counters'])}",
        f"unused tensors: {len(result['unused'])}",
        *result["unused"],
        f"layers left at their initialisation: {len(result['fresh'])}",
        *result["fresh"],
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
