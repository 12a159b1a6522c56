"""hmsa-eval: mIoU and the per-class table of a trained model on a dataset split.

    hmsa-eval --model_dir=runs/qs --scales=0.5,1.0,2.0 --flip
    hmsa-eval --model_dir=runs/qs --sweep="1.0;0.5,1.0;0.5,1.0,2.0"
    hmsa-eval --saved_model=exported/1 --dataset=camvid --data_dir=data/camvid --split=test
    hmsa-eval --model_dir=runs/cs --dataset=cityscapes --data_dir=$CITYSCAPES \\
              --cityscapes_submission_dir=results/cs_val
    hmsa-eval --model_dir=runs/qs --strategy=mirrored --num_cpu_replicas=2

The dataset defaults to the run's ``config.json`` (DataConfig); ``--dataset``/``--data_dir``
override it. Writes ``metrics_<chain>.json`` (with the confusion matrix) and ``.csv`` to
``--output_dir`` (default ``<model_dir>/eval/<split>``), and ``sweep.json``/``.csv`` for
a sweep. See docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from absl import app, flags

from hmsa_keras.cli import common

FLAGS = flags.FlagValues()
log = logging.getLogger("hmsa_keras")

flags.DEFINE_string("model_dir", None, "Training directory (best.keras, else last.keras, + config.json) "
                    "or a .keras file.", flag_values=FLAGS)
flags.DEFINE_string("saved_model", None, "Evaluate this exported SavedModel (serving_default: uint8 images "
                    "-> classes) instead; its scale chain is fixed at export.", flag_values=FLAGS)
flags.DEFINE_string("scales", None, "Inference scale chain, e.g. 0.5,1.0,2.0 (default: the run's "
                    "eval_scales, else 0.5,1.0,2.0).", flag_values=FLAGS)
flags.DEFINE_boolean("flip", False, "Average with the horizontally mirrored image.", flag_values=FLAGS)
flags.DEFINE_string("sweep", None, "Several chains separated by ';' (e.g. \"1.0;0.5,1.0;0.5,1.0,2.0\"), "
                    "evaluated in one pass and printed side by side. Replaces --scales.", flag_values=FLAGS)
flags.DEFINE_string("split", None, "Split to evaluate (default: the run's val_split).", flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "Override the run's dataset (synthetic, camvid, cityscapes, "
                    "cityscapes_tfds, mapillary, folder).", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "Override the run's data_dir.", flag_values=FLAGS)
flags.DEFINE_integer("eval_long_edge", None, "Resize images so the long edge is at most this (0 = full "
                     "size; default: the run's setting).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Where metrics go (default: <model_dir>/eval/<split>; with only "
                    "--saved_model nothing is written unless given).", flag_values=FLAGS)
flags.DEFINE_string("cityscapes_submission_dir", None, "Also write official Cityscapes result PNGs "
                    "(labelIds, <city>_<seq>_<frame>_leftImg8bit.png, ground-truth size) here.",
                    flag_values=FLAGS)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored"], "tf.distribute strategy: default (one "
                  "device) or mirrored (all GPUs, or --num_cpu_replicas logical CPUs).", flag_values=FLAGS)
flags.DEFINE_integer("num_cpu_replicas", 0, "With --strategy=mirrored on CPU: logical CPU replicas.",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 1, "Images per replica step (>1 only if all images share a size).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("max_images", 0, "Stop after this many images (0 = the whole split).", lower_bound=0,
                     flag_values=FLAGS)


def check_flags():
    """Validates flag combinations; returns the parsed chains. Raises app.UsageError."""
    from hmsa_keras.evaluation import parse_sweep

    if not FLAGS.model_dir and not FLAGS.saved_model:
        raise common.usage("model_dir", "give --model_dir (training directory or .keras file) or --saved_model")
    if FLAGS.model_dir and FLAGS.saved_model:
        raise common.usage("saved_model", "give either --model_dir or --saved_model, not both "
                           "(--model_dir's config.json is still used for the dataset if you need it: "
                           "pass --dataset/--data_dir instead)")
    if FLAGS.saved_model and not os.path.isfile(os.path.join(FLAGS.saved_model, "saved_model.pb")):
        raise common.usage("saved_model", f"{FLAGS.saved_model!r} is not a SavedModel directory (no saved_model.pb)")
    if FLAGS.model_dir:
        common.model_path_checked("model_dir", FLAGS.model_dir)
    if FLAGS.sweep is not None:
        if FLAGS.scales is not None:
            raise common.usage("sweep", "replaces --scales: give one or the other")
        if FLAGS.saved_model:
            raise common.usage("sweep", "needs a Keras model (--model_dir): a SavedModel's chain is fixed at export")
        try:
            chains = parse_sweep(FLAGS.sweep)
        except ValueError as exc:
            raise common.usage("sweep", str(exc)) from None
    else:
        chains = [common.parse_chain("scales", FLAGS.scales)] if FLAGS.scales is not None else None
    if FLAGS.cityscapes_submission_dir and chains is not None and len(chains) > 1:
        raise common.usage("cityscapes_submission_dir", "needs a single chain (--scales), not a --sweep")
    if FLAGS.num_cpu_replicas and FLAGS.strategy != "mirrored":
        raise common.usage("num_cpu_replicas", "only applies with --strategy=mirrored")
    return chains


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    chains = check_flags()
    # The strategy must exist before any TensorFlow op (logical CPU devices).
    from hmsa_keras.training.distribute import make_strategy

    strategy = make_strategy(FLAGS.strategy, FLAGS.num_cpu_replicas) if FLAGS.strategy != "default" else None

    from hmsa_keras import evaluation as E
    from hmsa_keras.data import DataError, build_dataset, get_dataset_info, iter_pairs

    _, run_data, run_train = common.run_configs(FLAGS.model_dir)
    if run_data is None and not FLAGS.dataset:
        raise common.usage("dataset", "is required: no config.json next to the model to take it from")
    cfg = common.data_config(run_data, FLAGS.dataset, FLAGS.data_dir, FLAGS.eval_long_edge)
    split = FLAGS.split or cfg.val_split
    if chains is None:
        chains = [tuple(sorted(run_train.eval_scales)) if run_train else (0.5, 1.0, 2.0)]
    if FLAGS.cityscapes_submission_dir and cfg.dataset != "cityscapes":
        raise common.usage("cityscapes_submission_dir", f"needs --dataset=cityscapes (file layout), not {cfg.dataset!r}")
    try:
        info = get_dataset_info(cfg, split)
        dataset = build_dataset(cfg, split, training=False, batch_size=FLAGS.batch_size)
        pairs = iter_pairs(cfg, split) if FLAGS.cityscapes_submission_dir else None
    except (DataError, ValueError) as exc:
        raise app.UsageError(f"dataset {cfg.dataset!r} split {split!r}: {exc}") from None

    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        if FLAGS.saved_model:
            model = E.SavedModelSegmenter(FLAGS.saved_model)
            if model.num_classes is not None and model.num_classes != info.num_classes:
                raise app.UsageError(f"--saved_model predicts {model.num_classes} classes; dataset "
                                     f"{cfg.dataset!r} has {info.num_classes}")
            log.info("SavedModel %s: its scale chain/flip were fixed at export; --scales/--flip are ignored",
                     FLAGS.saved_model)
        else:
            import hmsa_keras

            model = hmsa_keras.load_model(FLAGS.model_dir)
    writer = E.CityscapesSubmissionWriter(FLAGS.cityscapes_submission_dir, pairs) if pairs else None
    log.info("evaluating %s on %s/%s (%d classes), chain(s) %s%s, %d replica(s)",
             FLAGS.saved_model or FLAGS.model_dir, cfg.dataset, split, info.num_classes,
             "; ".join(E.chain_name(c) for c in chains), " + flip" if FLAGS.flip else "",
             strategy.num_replicas_in_sync if strategy else 1)
    try:
        results = E.evaluate(model, dataset, info.num_classes, chains, flip=FLAGS.flip, strategy=strategy,
                             class_names=info.class_names, on_batch=writer,
                             max_images=FLAGS.max_images or None)
    except (DataError, ValueError) as exc:
        raise app.UsageError(str(exc)) from None
    if writer:
        writer.close()

    from hmsa_keras.metrics import format_table

    for r in results:
        print(f"\n== {cfg.dataset}/{split}, scales {r.name}: {r.num_images} images, "
              f"{r.seconds / r.num_images:.3f} s/image ==")
        print(format_table(r.metrics))
    if len(results) > 1:
        print("\n== sweep (IoU %, side by side) ==")
        print(E.format_sweep(results))
    out_dir = FLAGS.output_dir or (os.path.join(FLAGS.model_dir if os.path.isdir(FLAGS.model_dir)
                                                else os.path.dirname(os.path.abspath(FLAGS.model_dir)),
                                                "eval", split) if FLAGS.model_dir else None)
    if out_dir:
        paths = E.write_results(results, out_dir)
        print(f"\nwrote {', '.join(paths)}")
    if writer:
        print(f"wrote {writer.index} Cityscapes result PNGs to {FLAGS.cityscapes_submission_dir}")
    return 0


def run():
    """Console entry point ``hmsa-eval``."""
    common.run_app(main, FLAGS)


if __name__ == "__main__":
    sys.exit(run())
