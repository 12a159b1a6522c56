"""What the tools that read a trained model share (hmsa-eval, hmsa-predict, hmsa-export).

The run configuration they use is the trained run's ``config.json`` (beside the model), with
every recipe flag given explicitly (command line or flagfile) applied on top; without a
``config.json`` the flags (or their defaults) alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from hmsa_keras.cli.tool import Tool, usage
from hmsa_keras.config import DataConfig, TrainConfig

log = logging.getLogger("hmsa_keras")

# The recipe fields a model-reading tool takes from a flagfile or its command line.
MODEL_DIR_FIELDS = ("model_dir", "eval_scales", "eval_flip")
# The DataConfig fields that decide which evaluation images a split holds.
EVAL_DATA_FIELDS = (
    "dataset",
    "data_dir",
    "val_split",
    "eval_long_edge",
    "eval_upscale",
    "synthetic_val_size",
    "synthetic_image_size",
    "seed",
    "validate",
    "tfds_manual_dir",
    "mapillary_version",
)
INFERENCE_ALIASES = {"scales": "eval_scales", "flip": "eval_flip"}
# What the run flags mean to the tools that read a trained model (Tool.help_overrides).
INFERENCE_HELP = {
    "model_dir": "The model: a training directory (its best.keras, else last.keras; its "
    "config.json gives the dataset and chain) or a .keras file.",
    "eval_scales": "Inference scale chain, e.g. 0.5,1.0,2.0 (default: the run's own, from its "
    "config.json).",
    "eval_flip": "Also segment the flipped image and average (default: the run's own setting).",
}


def model_path_checked(path) -> str:
    """The ``.keras`` file a ``--model_dir`` value resolves to, or a UsageError."""
    from hmsa_keras.api import resolve_model_path

    if not path:
        raise usage(
            "model_dir",
            "is required: a training directory (best.keras / last.keras) or a .keras file",
        )
    try:
        return resolve_model_path(path)
    except FileNotFoundError as exc:
        raise usage("model_dir", str(exc)) from None


def run_folder(model_dir) -> str:
    """The training directory of a ``--model_dir`` value (the folder of a ``.keras`` file)."""
    return model_dir if os.path.isdir(model_dir) else os.path.dirname(os.path.abspath(model_dir))


def run_configs(tool: Tool, model_dir=None):
    """``(DataConfig, TrainConfig, found)``: the run's configs (``found``: a config.json was
    read) with the explicitly given recipe flags applied. Raises UsageError for a bad
    config.json."""
    from hmsa_keras.config import read_run_config

    data_base = train_base = None
    if model_dir:
        try:
            _, data_base, train_base = read_run_config(run_folder(model_dir))
        except ValueError as exc:
            raise usage("model_dir", str(exc)) from None
    found = data_base is not None
    data_cfg = (
        tool.config(DataConfig, base=data_base, explicit_only=data_base is not None)
        if DataConfig in tool.recipe_fields
        else (data_base or DataConfig())
    )
    if (
        found
        and tool.given("dataset")
        and not tool.given("data_dir")
        and data_cfg.dataset != data_base.dataset
    ):
        data_cfg = dataclasses.replace(
            data_cfg, data_dir=None
        )  # another dataset: not the run's folder
    train_cfg = tool.config(TrainConfig, base=train_base, explicit_only=train_base is not None)
    return data_cfg, train_cfg, found


def class_table(cfg, num_classes):
    """(names, colours) for ``num_classes`` classes: the dataset's when it can be read and
    agrees, otherwise generated ones (a warning says why)."""
    from hmsa_keras.data.folder import default_colors

    if cfg is not None:
        try:
            from hmsa_keras.data import get_dataset_info

            info = get_dataset_info(cfg)
            if info.num_classes == num_classes:
                return list(info.class_names), [tuple(c) for c in info.colors]
            log.warning(
                "dataset %r has %d classes but the model predicts %d: using generated colours",
                cfg.dataset,
                info.num_classes,
                num_classes,
            )
        except Exception as exc:  # missing data_dir on this machine, ...
            log.warning(
                "cannot read the class table of dataset %r (%s): using generated names/colours",
                cfg.dataset,
                exc,
            )
    return [f"class_{i}" for i in range(num_classes)], default_colors(num_classes)
