"""hmsa-export: SavedModel (TF Serving) and TFLite (LiteRT) files from a trained model.

    hmsa-export --model_dir=runs/quickstart --output_dir=exported            (the run's chain)
    hmsa-export --model_dir=runs/quickstart/best.keras --output_dir=exported --scales=0.5,1.0,2.0 --flip \\
                --variants=saved_model,float32,full_int8 --fixed_size=512x1024 --calibration_images=300

Writes ``saved_model/`` (signatures ``serving_default``, ``with_details``,
``segment_with_scales``), ``hmsa_<variant>.tflite`` (dynamic input size) and, with
``--fixed_size``, ``hmsa_<variant>_<H>x<W>.tflite``, ``labels.json`` and
``export_report.json``; prints per artefact the size, the argmax agreement with the Keras
model on validation images and the median latency at ``--latency_size`` (LiteRT,
``--threads`` threads). The chain defaults to the run's (``eval_scales``/``eval_flip``).
See docs/export.md and export/README.md.
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
)


def main(argv):
    opts = TOOL.config(ExportConfig)
    model_path = common.model_path_checked(TOOL.flags["model_dir"].value if TOOL.given("model_dir") else None)
    if not opts.output_dir:
        raise usage("output_dir", "is required")
    if not opts.variants:
        raise usage("variants", "give at least one artefact")

    import hmsa_keras
    from hmsa_keras.export import export_model
    from hmsa_keras.export import report as R

    data_cfg, train_cfg, found = common.run_configs(TOOL, model_path)
    if not found and not TOOL.given("dataset"):
        log.warning("no config.json beside the model: calibration/validation images come from the default "
                    "dataset %r (pass --dataset/--data_dir to choose)", data_cfg.dataset)
    scales, flip = train_cfg.eval_scales, train_cfg.eval_flip
    model = hmsa_keras.load_model(model_path)
    names, colors = common.class_table(data_cfg, int(model.num_classes))
    log.info("model %s: %d classes, scales %s, flip %s -> %s", model_path, model.num_classes,
             ",".join(f"{s:g}" for s in scales), flip, opts.output_dir)
    calibration = R.sample_images(data_cfg, data_cfg.train_split, opts.calibration_images, training=True) \
        if "full_int8" in opts.variants else []
    evaluation = R.sample_images(data_cfg, data_cfg.val_split, opts.eval_images, training=False)
    log.info("%d calibration crops, %d validation images; latency at %s with %d threads", len(calibration),
             len(evaluation), "x".join(map(str, opts.latency_size)) if opts.latency_size else "-", opts.threads)
    export_model(model, opts.output_dir, scales=scales, flip=flip, variants=opts.variants,
                 fixed_size=opts.fixed_size, calibration_images=calibration, eval_images=evaluation,
                 latency_size=opts.latency_size, latency_runs=opts.latency_runs, threads=opts.threads,
                 class_names=names, colors=colors, echo=lambda line: print(line, flush=True))
    print(f"report: {opts.output_dir}/export_report.json", flush=True)
    return 0


def run():
    """Console entry point ``hmsa-export``."""
    TOOL.run(main)


if __name__ == "__main__":
    run()
