"""Helpers shared by the inference command-line tools (hmsa-eval, hmsa-predict).

Each tool defines its flags on its OWN ``flags.FlagValues`` so that several tools
can be imported into one process (tests) without duplicate-flag errors; ``run_app``
adopts them into absl's global ``FLAGS`` only when the tool is the program.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from absl import app, flags

from hmsa_keras.config import DataConfig

log = logging.getLogger("hmsa_keras")


def run_app(main, flag_values: flags.FlagValues):
    """``app.run(main)`` with ``flag_values`` parsed from the command line."""
    flags.FLAGS.append_flag_values(flag_values)
    for name in flag_values:  # list them under --help (absl shows the main module's key flags)
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag_values[name])

    def parse(argv):
        rest = app.parse_flags_with_usage(argv)
        flag_values.mark_as_parsed()
        return rest

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app.run(main, flags_parser=parse)


def usage(flag, message):
    """An ``app.UsageError`` naming the flag: absl prints it and exits with status 1."""
    return app.UsageError(f"--{flag}: {message}")


def parse_chain(flag, text):
    from hmsa_keras.evaluation import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        raise usage(flag, str(exc)) from None


def model_path_checked(flag, path):
    """The ``.keras`` file a ``--model_dir`` value resolves to, or a UsageError."""
    from hmsa_keras.api import resolve_model_path

    if not path:
        raise usage(flag, "is required: a training directory (best.keras / last.keras) or a .keras file")
    try:
        return resolve_model_path(path)
    except FileNotFoundError as exc:
        raise usage(flag, str(exc)) from None


def run_configs(model_dir):
    """(ModelConfig, DataConfig, TrainConfig) of a training directory (None where absent)."""
    from hmsa_keras.config import read_run_config

    if not model_dir:
        return None, None, None
    folder = model_dir if os.path.isdir(model_dir) else os.path.dirname(os.path.abspath(model_dir))
    try:
        return read_run_config(folder)
    except ValueError as exc:
        raise usage("model_dir", str(exc)) from None


def data_config(base, dataset=None, data_dir=None, eval_long_edge=None):
    """The run's DataConfig (or the default one) with command-line overrides applied."""
    cfg = base or DataConfig()
    changes = {}
    if dataset:
        changes["dataset"] = dataset
        if dataset != cfg.dataset and not data_dir:
            changes["data_dir"] = None
    if data_dir:
        changes["data_dir"] = data_dir
    if eval_long_edge is not None:
        changes["eval_long_edge"] = eval_long_edge or None
    return dataclasses.replace(cfg, **changes)


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
            log.warning("dataset %r has %d classes but the model predicts %d: using generated colours",
                        cfg.dataset, info.num_classes, num_classes)
        except Exception as exc:  # missing data_dir on this machine, ...
            log.warning("cannot read the class table of dataset %r (%s): using generated names/colours",
                        cfg.dataset, exc)
    return [f"class_{i}" for i in range(num_classes)], default_colors(num_classes)
