"""hmsa-export: SavedModel (TF Serving) and TFLite (LiteRT) files from a trained model.

    hmsa-export --model_dir=runs/quickstart --output_dir=exported --scales=0.5,1.0,2.0
    hmsa-export --model_dir=runs/quickstart/best.keras --output_dir=exported --flip \\
                --variants=saved_model,float32,full_int8 --fixed_size=512x1024 --calibration_images=300

Writes ``saved_model/`` (signatures ``serving_default``, ``with_details``,
``segment_with_scales``), ``hmsa_<variant>.tflite`` (dynamic input size) and, with
``--fixed_size``, ``hmsa_<variant>_<H>x<W>.tflite``, ``labels.json`` and
``export_report.json``; prints per artefact the size, the argmax agreement with the Keras
model on validation images and the median latency at ``--latency_size`` (LiteRT,
``--threads`` threads). See docs/export.md and export/README.md.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from hmsa_keras.cli import common

FLAGS = flags.FlagValues()
log = logging.getLogger("hmsa_keras")

flags.DEFINE_string("model_dir", None, "Training directory (best.keras, else last.keras) or a .keras file.",
                    flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Where the exported files go.", flag_values=FLAGS)
flags.DEFINE_string("scales", "0.5,1.0,2.0", "Scale chain baked into the exported graphs "
                    "(segment_with_scales takes any chain at request time).", flag_values=FLAGS)
flags.DEFINE_boolean("flip", False, "Bake flip-TTA (average with the mirrored image) into the graphs.",
                     flag_values=FLAGS)
flags.DEFINE_list("variants", "saved_model,float32,float16,dynamic_int8,full_int8",
                  "Any of saved_model, float32, float16, dynamic_int8, full_int8.", flag_values=FLAGS)
flags.DEFINE_string("fixed_size", None, "HxW: also write fixed-input-size TFLite files (GPU/NNAPI "
                    "delegates need static shapes).", flag_values=FLAGS)
flags.DEFINE_integer("calibration_images", 200, "Training crops of the run's dataset used to calibrate "
                     "full_int8.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("eval_images", 16, "Validation images for the agreement check (0: skip).",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string("latency_size", "512x1024", "HxW at which latency is measured ('' or 0: skip).",
                    flag_values=FLAGS)
flags.DEFINE_integer("latency_runs", 5, "Timed runs per artefact (median reported).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("threads", 2, "LiteRT interpreter threads for the latency.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "Dataset for calibration/validation images (default: the run's).",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "data_dir for --dataset.", flag_values=FLAGS)


def parse_size(flag, text):
    """'512x1024' -> (512, 1024); '' or '0' -> None."""
    if not text or text.strip() in ("0", "none", "None"):
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise common.usage(flag, f"expected HxW such as 512x1024, got {text!r}") from None
    if h < 1 or w < 1:
        raise common.usage(flag, f"height and width must be >= 1, got {text!r}")
    return h, w


def check_flags():
    from hmsa_keras.export import ALL_VARIANTS

    model_path = common.model_path_checked("model_dir", FLAGS.model_dir)
    if not FLAGS.output_dir:
        raise common.usage("output_dir", "is required")
    variants = [v.strip() for v in FLAGS.variants if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown or not variants:
        raise common.usage("variants", f"unknown {unknown}; choose from {','.join(ALL_VARIANTS)}")
    return (model_path, common.parse_chain("scales", FLAGS.scales), variants,
            parse_size("fixed_size", FLAGS.fixed_size), parse_size("latency_size", FLAGS.latency_size))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    model_path, scales, variants, fixed_size, latency_size = check_flags()

    import hmsa_keras
    from hmsa_keras.export import export_model
    from hmsa_keras.export import report as R

    _, run_data, _ = common.run_configs(FLAGS.model_dir)
    data_cfg = common.data_config(run_data, FLAGS.dataset, FLAGS.data_dir)
    if run_data is None and not FLAGS.dataset:
        log.warning("no config.json beside the model: calibration/validation images come from the default "
                    "dataset %r (pass --dataset/--data_dir to choose)", data_cfg.dataset)
    model = hmsa_keras.load_model(model_path)
    names, colors = common.class_table(data_cfg, int(model.num_classes))
    log.info("model %s: %d classes, scales %s, flip %s -> %s", model_path, model.num_classes, scales,
             FLAGS.flip, FLAGS.output_dir)
    needs_calibration = any(v == "full_int8" for v in variants)
    calibration = R.sample_images(data_cfg, data_cfg.train_split, FLAGS.calibration_images, training=True) \
        if needs_calibration else []
    evaluation = R.sample_images(data_cfg, data_cfg.val_split, FLAGS.eval_images, training=False)
    log.info("%d calibration crops, %d validation images; latency at %s with %d threads", len(calibration),
             len(evaluation), "x".join(map(str, latency_size)) if latency_size else "-", FLAGS.threads)
    export_model(model, FLAGS.output_dir, scales=scales, flip=FLAGS.flip, variants=variants,
                 fixed_size=fixed_size, calibration_images=calibration, eval_images=evaluation,
                 latency_size=latency_size, latency_runs=FLAGS.latency_runs, threads=FLAGS.threads,
                 class_names=names, colors=colors, echo=lambda line: print(line, flush=True))
    print(f"report: {FLAGS.output_dir}/export_report.json", flush=True)
    return 0


def run():
    """Console entry point ``hmsa-export``."""
    common.run_app(main, FLAGS)


if __name__ == "__main__":
    sys.exit(run())
