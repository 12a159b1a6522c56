"""hmsa-eval: mIoU and the per-class table of a trained model on a dataset split.

    hmsa-eval --model_dir=runs/qs --scales=0.5,1.0,2.0 --flip
    hmsa-eval --model_dir=runs/qs --sweep="1.0;0.5,1.0;0.5,1.0,2.0"
    hmsa-eval --flagfile=flags/quickstart.cfg                 (the recipe's run, dataset and chain)
    hmsa-eval --saved_model=exported/hmsa --dataset=camvid --data_dir=data/camvid \\
              --split=test
    hmsa-eval --model_dir=runs/cs --dataset=cityscapes --data_dir=$CITYSCAPES \\
              --cityscapes_submission_dir=results/cs_val
    hmsa-eval --model_dir=runs/big --tile_size=512x1024          (images too large for memory)
    hmsa-eval --model_dir=runs/qs --strategy=mirrored --num_cpu_replicas=2

The dataset and the chain default to the run's ``config.json`` (its DataConfig and
``eval_scales``/``eval_flip``); flags given override them. Writes ``metrics_<chain>.json``
(with the confusion matrix) and ``.csv`` to ``--output_dir`` (default
``<model_dir>/eval/<split>``), and ``sweep.json``/``.csv`` for a sweep. See docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import logging
import os

from absl import app

from hmsa_keras.cli import common
from hmsa_keras.cli.tool import Tool, usage
from hmsa_keras.config import DataConfig, EvalConfig, TrainConfig

log = logging.getLogger("hmsa_keras")

TOOL = Tool(
    name="hmsa-eval",
    doc=__doc__,
    options=EvalConfig,
    recipe_fields={
        DataConfig: common.EVAL_DATA_FIELDS,
        TrainConfig: common.MODEL_DIR_FIELDS + ("strategy", "num_cpu_replicas"),
    },
    aliases={**common.INFERENCE_ALIASES, "batch_size": "eval_batch_size"},
    help_overrides=common.INFERENCE_HELP,
)


def check_flags(opts: EvalConfig, train_cfg: TrainConfig):
    """Validates flag combinations; returns the chains (None: the run's). Raises UsageError."""
    from hmsa_keras.conventions import parse_sweep

    model_dir = train_cfg.model_dir if TOOL.given("model_dir") else None
    given = [
        f
        for f, v in (
            ("model_dir", model_dir),
            ("saved_model", opts.saved_model),
            ("tflite", opts.tflite),
        )
        if v
    ]
    if not given:
        raise usage(
            "model_dir",
            "give --model_dir (training directory or .keras file), --saved_model or --tflite",
        )
    if len(given) > 1:
        raise usage(
            given[1],
            f"give one of --model_dir, --saved_model, --tflite, not {' and '.join(given)} "
            "(pass --dataset/--data_dir for the data)",
        )
    if opts.saved_model:
        from hmsa_keras.export.saved_model import resolve_saved_model_dir

        try:
            resolve_saved_model_dir(opts.saved_model)
        except FileNotFoundError as exc:
            raise usage("saved_model", str(exc)) from None
    if opts.tflite and not os.path.isfile(opts.tflite):
        raise usage("tflite", f"{opts.tflite!r}: no such .tflite file")
    if opts.tflite:
        with open(opts.tflite, "rb") as f:
            header = f.read(8)
        if header[4:8] != b"TFL3":  # the FlatBuffers file identifier of TFLite models
            raise usage("tflite", f"{opts.tflite!r} is not a TFLite model (no TFL3 identifier)")
    exported = opts.saved_model or opts.tflite
    if model_dir:
        common.model_path_checked(model_dir)
    chains = None
    if opts.sweep is not None:
        if TOOL.given("eval_scales"):
            raise usage("sweep", "replaces --scales: give one or the other")
        if exported:
            raise usage(
                "sweep",
                "needs a Keras model (--model_dir): an exported file's chain is fixed at export",
            )
        try:
            chains = parse_sweep(opts.sweep)
        except ValueError as exc:
            raise app.UsageError(str(exc)) from None
    if opts.cityscapes_submission_dir and chains is not None and len(chains) > 1:
        raise usage("cityscapes_submission_dir", "needs a single chain (--scales), not a --sweep")
    if train_cfg.num_cpu_replicas and train_cfg.strategy != "mirrored":
        raise usage("num_cpu_replicas", "only applies with --strategy=mirrored")
    if train_cfg.strategy == "multi_worker":
        raise usage("strategy", "hmsa-eval runs on one machine: default or mirrored")
    if opts.tile_size and train_cfg.strategy != "default":
        raise usage("tile_size", "tiled evaluation runs on one replica: use --strategy=default")
    if opts.tile_size and exported:
        raise usage("tile_size", "tiles need a Keras model (--model_dir)")
    if opts.tile_size and not 0 <= opts.tile_overlap < min(opts.tile_size):
        raise usage(
            "tile_overlap",
            f"must be smaller than the tile ({opts.tile_overlap} >= {min(opts.tile_size)})",
        )
    return chains, model_dir


def main(argv):
    opts = TOOL.config(EvalConfig)
    model_dir = TOOL.flags["model_dir"].value if TOOL.given("model_dir") else None
    data_cfg, train_cfg, found = common.run_configs(TOOL, model_dir)
    chains, model_dir = check_flags(opts, train_cfg)
    # The strategy must exist before any TensorFlow op (logical CPU devices).
    from hmsa_keras.training.distribute import make_strategy

    strategy = (
        make_strategy(train_cfg.strategy, train_cfg.num_cpu_replicas)
        if train_cfg.strategy != "default"
        else None
    )

    from hmsa_keras import metrics as M
    from hmsa_keras.conventions import chain_name
    from hmsa_keras.data import DataError, build_dataset, get_dataset_info, iter_pairs
    from hmsa_keras.data.pipeline import check_eval_inputs
    from hmsa_keras.evaluation import evaluate
    from hmsa_keras.evaluation.cityscapes import CityscapesSubmissionWriter

    if not found and not TOOL.given("dataset"):
        raise usage("dataset", "is required: no config.json next to the model to take it from")
    split = opts.split or data_cfg.val_split
    flip = train_cfg.eval_flip
    if chains is None:
        chains = [train_cfg.eval_scales]
    if opts.cityscapes_submission_dir and data_cfg.dataset != "cityscapes":
        raise usage(
            "cityscapes_submission_dir",
            f"needs --dataset=cityscapes (file layout), not {data_cfg.dataset!r}",
        )
    try:
        info = get_dataset_info(data_cfg, split)
        dataset = build_dataset(data_cfg, split, training=False, batch_size=opts.eval_batch_size)
        pairs = iter_pairs(data_cfg, split) if opts.cityscapes_submission_dir else None
    except (DataError, ValueError) as exc:
        raise app.UsageError(f"dataset {data_cfg.dataset!r} split {split!r}: {exc}") from None

    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        if opts.saved_model or opts.tflite:
            from hmsa_keras.export.saved_model import SavedModelSegmenter
            from hmsa_keras.export.tflite import TFLiteSegmenter

            flag = "saved_model" if opts.saved_model else "tflite"
            model = (
                SavedModelSegmenter(opts.saved_model)
                if opts.saved_model
                else TFLiteSegmenter(opts.tflite)
            )
            if model.num_classes is not None and model.num_classes != info.num_classes:
                raise app.UsageError(
                    f"--{flag} predicts {model.num_classes} classes; dataset "
                    f"{data_cfg.dataset!r} has {info.num_classes}"
                )
            if TOOL.given("eval_scales") or TOOL.given("eval_flip"):
                log.warning(
                    "--scales/--flip are ignored: an exported file's chain was fixed at export"
                )
            if model.scales is not None:
                chains, flip = [model.scales], model.flip
        else:
            import hmsa_keras

            model = hmsa_keras.load_model(model_dir)
    try:  # up front, from file headers: one image size per batch; every image large enough
        scales = sorted({s for c in chains for s in c})
        check_eval_inputs(
            data_cfg,
            split,
            opts.eval_batch_size,
            scales,
            tile_size=opts.tile_size,
            max_images=opts.max_images or None,
        )
    except DataError as exc:
        raise app.UsageError(str(exc)) from None
    writer = CityscapesSubmissionWriter(opts.cityscapes_submission_dir, pairs) if pairs else None
    log.info(
        "evaluating %s on %s/%s (%d classes), chain(s) %s, %d replica(s)%s",
        opts.saved_model or opts.tflite or model_dir,
        data_cfg.dataset,
        split,
        info.num_classes,
        "; ".join(chain_name(c, flip) for c in chains),
        strategy.num_replicas_in_sync if strategy else 1,
        f", tiles {opts.tile_size[0]}x{opts.tile_size[1]}" if opts.tile_size else "",
    )
    try:
        results = evaluate(
            model,
            dataset,
            info.num_classes,
            chains,
            flip=flip,
            strategy=strategy,
            class_names=info.class_names,
            on_batch=writer,
            max_images=opts.max_images or None,
            tile_size=opts.tile_size,
            tile_overlap=opts.tile_overlap,
            tile_blend=opts.tile_blend,
        )
    except (DataError, ValueError) as exc:
        raise app.UsageError(str(exc)) from None
    if writer:
        writer.close()

    for r in results:
        print(
            f"\n== {data_cfg.dataset}/{split}, scales {r.name}: {r.num_images} images, "
            f"{r.seconds / r.num_images:.3f} s/image =="
        )
        print(M.format_table(r.metrics))
    if len(results) > 1:
        print("\n== sweep (IoU %, side by side) ==")
        print(M.format_sweep(results))
    out_dir = opts.output_dir or (
        os.path.join(common.run_folder(model_dir), "eval", split) if model_dir else None
    )
    if out_dir:
        paths = M.write_results(results, out_dir)
        print(f"\nwrote {', '.join(paths)}")
    else:  # an exported file has no run directory to write beside
        print("\n(no JSON/CSV written: give --output_dir to keep these metrics)")
    if writer:
        print(f"wrote {writer.index} Cityscapes result PNGs to {opts.cityscapes_submission_dir}")
    return 0


def run():
    """Console entry point ``hmsa-eval``."""
    TOOL.run(main)


if __name__ == "__main__":
    run()
