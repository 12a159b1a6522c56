"""hmsa-export: SavedModel (TF Serving) and TFLite (LiteRT) files from a trained model.

    hmsa-export --model_dir=runs/quickstart --output_dir=exported            (the run's chain)
    hmsa-export --model_dir=runs/quickstart/best.keras --output_dir=exported \\
                --scales=0.5,1.0,2.0 --flip --variants=saved_model,float32,full_int8 \\
                --fixed_size=512x1024 --calibration_images=32

Writes ``<serving_name>/<serving_version>/`` (the SavedModel in TF Serving's layout, with
warm-up requests; signatures ``serving_default``, ``with_details``, ``segment_with_scales``,
``serving_encoded``, ``serving_encoded_png``), ``models.config``,
``batching_parameters.txt``, ``hmsa_<variant>.tflite`` (dynamic input size, metadata
embedded, ``.metadata.json`` beside it) and, with ``--fixed_size``,
``hmsa_<variant>_<H>x<W>.tflite``, ``labels.json`` and ``export_report.json``; prints per
artefact the size, the argmax agreement with the Keras model on validation images (at
their size and at ``--latency_size``), their mIoU and the median latency at
``--latency_size`` (LiteRT, ``--threads`` threads). The chain defaults to the run's
(``eval_scales``/``eval_flip``). See docs/export.md and export/README.md.
"""

from __future__ import annotations

import logging

from hmsa_keras.cli import common
from hmsa_keras.cli.tool import Tool, usage
from hmsa_keras.config import DataConfig, ExportConfig, TrainConfig

log = logging.getLogger("hmsa_keras")

TOOL = Tool(
    name="hmsa-export",
    doc=__doc__,
    options=ExportConfig,
    recipe_fields={DataConfig: None, TrainConfig: common.MODEL_DIR_FIELDS},
    aliases=dict(common.INFERENCE_ALIASES),
    help_overrides=common.INFERENCE_HELP,
)


def main(argv):
    opts = TOOL.config(ExportConfig)
    model_path = common.model_path_checked(
        TOOL.flags["model_dir"].value if TOOL.given("model_dir") else None
    )
    if not opts.output_dir:
        raise usage("output_dir", "is required")
    if not opts.variants:
        raise usage("variants", "give at least one artefact")
    if (opts.float_ops or opts.int8_sweep) and "full_int8" not in opts.variants:
        raise usage(
            "float_ops" if opts.float_ops else "int8_sweep",
            "applies to full_int8: add it to --variants",
        )
    float_ops = tuple(op.strip().upper() for op in (opts.float_ops or "").split(",") if op.strip())
    if "AUTO" in float_ops:
        if len(float_ops) > 1:
            raise usage("float_ops", "'auto' chooses the op types itself: give it alone")
        float_ops = ("auto",)
    if float_ops and float_ops != ("auto",):
        from ai_edge_litert import schema_py_generated as schema

        known = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
        bad = [op for op in float_ops if op not in known]
        if bad:
            raise usage(
                "float_ops",
                f"unknown TFLite op type(s) {bad}; use builtin names such as "
                "RESIZE_BILINEAR, CONV_2D, LOGISTIC (the report of --int8_sweep lists those of "
                "the model)",
            )

    import hmsa_keras
    from hmsa_keras.export import export_model
    from hmsa_keras.export import report as R

    data_cfg, train_cfg, found = common.run_configs(TOOL, model_path)
    if not found and not TOOL.given("dataset"):
        log.warning(
            "no config.json beside the model: calibration/validation images come from the default "
            "dataset %r (pass --dataset/--data_dir to choose)",
            data_cfg.dataset,
        )
    scales, flip = train_cfg.eval_scales, train_cfg.eval_flip
    model = hmsa_keras.load_model(model_path)
    names, colors = common.class_table(data_cfg, int(model.num_classes))
    log.info(
        "model %s: %d classes, scales %s, flip %s -> %s",
        model_path,
        model.num_classes,
        ",".join(f"{s:g}" for s in scales),
        flip,
        opts.output_dir,
    )
    if "full_int8" in opts.variants and opts.calibration_crops:
        calibration = R.sample_images(
            data_cfg, data_cfg.train_split, opts.calibration_images, training=True
        )
        calibration_size = None
    elif "full_int8" in opts.variants:
        calibration = R.sample_images(
            data_cfg, data_cfg.train_split, opts.calibration_images, training=False
        )
        calibration_size = opts.calibration_size or opts.latency_size
    else:
        calibration, calibration_size = [], None
    if len(calibration) < (opts.calibration_images if "full_int8" in opts.variants else 0):
        log.warning(
            "the %r split gave %d of %d calibration images",
            data_cfg.train_split,
            len(calibration),
            opts.calibration_images,
        )
    images, labels = R.sample_pairs(data_cfg, data_cfg.val_split, opts.eval_images, training=False)
    log.info(
        "%d calibration images%s, %d validation images; latency at %s with %d threads",
        len(calibration),
        f" at {calibration_size[0]}x{calibration_size[1]}"
        if calibration_size
        else " (training crops)",
        len(images),
        "x".join(map(str, opts.latency_size)) if opts.latency_size else "-",
        opts.threads,
    )
    from hmsa_keras.export.tflite import OUTPUT_SETS

    export_model(
        model,
        opts.output_dir,
        scales=scales,
        flip=flip,
        variants=opts.variants,
        fixed_size=opts.fixed_size,
        calibration_images=calibration,
        eval_images=images,
        eval_labels=labels,
        latency_size=opts.latency_size,
        latency_runs=opts.latency_runs,
        threads=opts.threads,
        class_names=names,
        colors=colors,
        echo=lambda line: print(line, flush=True),
        serving_name=opts.serving_name,
        serving_version=opts.serving_version,
        warmup_size=opts.warmup_size,
        tflite_outputs=OUTPUT_SETS[opts.tflite_outputs],
        calibration_size=calibration_size,
        float_ops=float_ops,
        int8_sweep=opts.int8_sweep,
        int8_target=opts.int8_target,
    )
    print(f"report: {opts.output_dir}/export_report.json", flush=True)
    return 0


def run():
    """Console entry point ``hmsa-export``."""
    TOOL.run(main)


if __name__ == "__main__":
    run()
