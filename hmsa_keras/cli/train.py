"""hmsa-train: train HMSA from flags and flagfile recipes.

    hmsa-train --flagfile=flags/quickstart.cfg [--flag=value ...]
    hmsa-train --recipe=quickstart --model_dir=runs/qs     (a recipe shipped with the package)

    hmsa-train --flagfile=flags/staged_camvid_2_attention.cfg --init_from=runs/stage1   (warm start)

Every flag is a field of ModelConfig / DataConfig / TrainConfig (hmsa_keras/config.py), with
its help, default and bounds defined there; ``hmsa-train --help`` lists them all. Exit status:
0 done, 1 bad flags, 2 data error, 3 training diverged (NaN).
"""

from __future__ import annotations

import sys

from absl import app

from hmsa_keras.cli.tool import Tool, usage
from hmsa_keras.config import DataConfig, ModelConfig, TrainConfig

TOOL = Tool(
    name="hmsa-train",
    doc=__doc__,
    recipe_fields={ModelConfig: None, DataConfig: None, TrainConfig: None},
)


def configs_from_flags(tool: Tool = TOOL):
    """(ModelConfig, DataConfig, TrainConfig) from the parsed flags, checked as far as possible
    without TensorFlow (paths); raises app.UsageError naming the flag."""
    import os

    model_cfg, data_cfg, train_cfg = (
        tool.config(cls) for cls in (ModelConfig, DataConfig, TrainConfig)
    )
    if data_cfg.dataset not in ("synthetic", "cityscapes_tfds") and not data_cfg.data_dir:
        raise usage("data_dir", f"is required for --dataset={data_cfg.dataset}")
    if (
        data_cfg.data_dir
        and data_cfg.dataset != "cityscapes_tfds"
        and not os.path.isdir(data_cfg.data_dir)
    ):
        raise usage("data_dir", f"{data_cfg.data_dir!r} is not a directory")
    if (
        model_cfg.weights
        and model_cfg.weights != "imagenet"
        and not os.path.isfile(model_cfg.weights)
    ):
        raise usage("weights", f"{model_cfg.weights!r} is not a file (or use 'imagenet')")
    if data_cfg.scale_min > data_cfg.scale_max:
        raise usage(
            "scale_min", f"({data_cfg.scale_min:g}) must be <= --scale_max ({data_cfg.scale_max:g})"
        )
    if model_cfg.fusion == "hierarchical" and 1.0 not in model_cfg.train_scales:
        raise usage(
            "train_scales",
            f"must include 1.0 for hierarchical fusion, got "
            f"{','.join(f'{s:g}' for s in model_cfg.train_scales)}",
        )
    if train_cfg.init_from is not None:
        from hmsa_keras.training.warm_start import WarmStartError, resolve_source

        try:
            resolve_source(train_cfg.init_from)
        except WarmStartError as e:
            raise usage("init_from", str(e)) from None
    return model_cfg, data_cfg, train_cfg


def configs_from_argv(argv):
    """The configs exactly as ``hmsa-train <argv>`` would build them (benchmarks, tests)."""
    tool = Tool(name=TOOL.name, doc=TOOL.doc, recipe_fields=TOOL.recipe_fields)
    tool.parse(["hmsa-train", *argv])
    return configs_from_flags(tool)


def write_flagfile(tool: Tool, model_dir: str) -> None:
    """Records every run flag with its value as a reusable flagfile ``model_dir/flags.txt``."""
    import os

    os.makedirs(model_dir, exist_ok=True)
    lines = [
        tool.flags[name].serialize()
        for name in sorted(tool.flags)
        if name not in ("recipe", "flagfile")
        and not tool.flags[name].help.startswith("Alias for")
        and tool.flags[name].value is not None
    ]
    with open(os.path.join(model_dir, "flags.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines if line))


def main(argv):
    model_cfg, data_cfg, train_cfg = configs_from_flags()
    from hmsa_keras.training.distribute import MultiWorkerFault, is_chief, make_strategy

    try:
        strategy = make_strategy(train_cfg.strategy, train_cfg.num_cpu_replicas)  # before any TF op
    except (ValueError, RuntimeError) as e:  # e.g. --strategy=multi_worker without TF_CONFIG
        raise usage("strategy", str(e)) from None
    from hmsa_keras.data import DataError
    from hmsa_keras.training.run_config import ConfigError
    from hmsa_keras.training.trainer import TrainingDiverged, train
    from hmsa_keras.training.warm_start import WarmStartError

    if is_chief(strategy):
        write_flagfile(TOOL, train_cfg.model_dir)
    try:
        result = train(model_cfg, data_cfg, train_cfg, strategy)
    except ConfigError as e:  # its message names the flag
        raise app.UsageError(str(e)) from None
    except WarmStartError as e:  # unreadable file, or nothing matches: names the path
        raise usage("init_from", str(e)) from None
    except TrainingDiverged as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 3
    except DataError as e:  # missing/unreadable files: the message names them
        print(f"hmsa-train: data error: {e}", file=sys.stderr)
        return 2
    except MultiWorkerFault as e:  # a lost peer or workers that resumed differently: names them
        print(f"hmsa-train: error: {e}", file=sys.stderr)
        return 4
    print(f"Done: best val mIoU {result['best_val_miou']:.4f}; models in {train_cfg.model_dir}")
    if train_cfg.export_dir and is_chief(strategy):
        import os

        from hmsa_keras.api import load_model
        from hmsa_keras.export import export_saved_model

        path = export_saved_model(
            load_model(train_cfg.model_dir),
            os.path.join(train_cfg.model_dir, train_cfg.export_dir),
            scales=train_cfg.eval_scales,
            flip=train_cfg.eval_flip,
        )
        print(f"Exported SavedModel to {path}")
    return 0


def run():
    """Console entry point ``hmsa-train``."""
    TOOL.run(main)


if __name__ == "__main__":
    run()
