"""hmsa-predict: segment images (files, folders or globs) and write what you ask for.

    hmsa-predict --model_dir=runs/qs --input=street.png --output_dir=out --scales=0.5,1.0,2.0 --flip
    hmsa-predict --model_dir=runs/qs --input='photos/*.jpg' --output_dir=out --save_raw --save_probs \\
                 --save_attention
    hmsa-predict --model_dir=runs/qs --input=huge.png --output_dir=out --tile_size=1024x1024 --tile_overlap=256

Per image ``<stem>``: ``<stem>_color.png`` (colourised classes) and ``<stem>_overlay.png``
(unless ``--novisualize``); ``--save_raw``: ``<stem>_label.png`` (class ids, uint8);
``--save_probs``: ``<stem>_probs.npy`` (float16 [H, W, K] softmax); ``--save_attention``:
``<stem>_attention_<scale>.png`` per scale of the chain.

Auto-labelling (``hmsa-autolabel`` is the same tool without the visualisations):

    hmsa-autolabel --model_dir=runs/teacher --input=unlabelled/ --pseudo_label_dir=pseudo --confidence=0.5

writes a folder dataset (hmsa_keras/data/folder.py): ``pseudo/<split>/images/<stem>.<ext>``
(the input file, copied), ``pseudo/<split>/labels/<stem>.png`` (class ids; pixels whose
top probability is below ``--confidence`` -> 255 = ignore) and ``pseudo/classes.json``;
train with ``DataConfig.pseudo_label_dir`` / ``hmsa-train --pseudo_label_dir=pseudo``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags

from hmsa_keras.cli import common

FLAGS = flags.FlagValues()
log = logging.getLogger("hmsa_keras")

flags.DEFINE_string("model_dir", None, "Training directory (best.keras, else last.keras) or a .keras file.",
                    flag_values=FLAGS)
flags.DEFINE_string("input", None, "An image file, a folder of images (not recursive) or a glob pattern.",
                    flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Where the per-image outputs go (required unless only "
                    "--pseudo_label_dir is wanted).", flag_values=FLAGS)
flags.DEFINE_string("scales", None, "Inference scale chain (default: the run's eval_scales, else 0.5,1.0,2.0).",
                    flag_values=FLAGS)
flags.DEFINE_boolean("flip", False, "Average with the horizontally mirrored image.", flag_values=FLAGS)
flags.DEFINE_boolean("visualize", True, "Write <stem>_color.png and <stem>_overlay.png.", flag_values=FLAGS)
flags.DEFINE_float("overlay_alpha", 0.5, "Opacity of the colours in the overlay.", lower_bound=0.0,
                   upper_bound=1.0, flag_values=FLAGS)
flags.DEFINE_boolean("save_raw", False, "Write <stem>_label.png: class ids as a single-channel PNG.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("save_probs", False, "Write <stem>_probs.npy: float16 class probabilities [H, W, K].",
                     flag_values=FLAGS)
flags.DEFINE_boolean("save_attention", False, "Write <stem>_attention_<scale>.png per scale (the largest "
                     "scale's attention is not used by hierarchical fusion).", flag_values=FLAGS)
flags.DEFINE_string("tile_size", None, "Tiled inference for large images: HxW (e.g. 1024x1024) or one "
                    "number; each tile runs the whole chain.", flag_values=FLAGS)
flags.DEFINE_integer("tile_overlap", 128, "Pixels shared by neighbouring tiles.", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_enum("tile_blend", "gaussian", ["gaussian", "uniform", "crop"], "How overlapping tiles are "
                  "blended (see hmsa_keras/inference.py).", flag_values=FLAGS)
flags.DEFINE_string("pseudo_label_dir", None, "Also write pseudo-labels as a folder dataset here.",
                    flag_values=FLAGS)
flags.DEFINE_float("confidence", 0.5, "Pseudo-labels: pixels whose top class probability is below this "
                   "become 255 (ignore).", lower_bound=0.0, upper_bound=1.0, flag_values=FLAGS)
flags.DEFINE_string("pseudo_split", "train", "Split folder of the pseudo-label dataset.", flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "Dataset whose class names/colours to use (default: the run's).",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "data_dir for --dataset (folder datasets keep classes.json there).",
                    flag_values=FLAGS)


def find_inputs(spec):
    """Sorted image paths for a file, a folder (non-recursive) or a glob pattern."""
    from hmsa_keras.data.io import IMAGE_EXTENSIONS, list_images

    if os.path.isdir(spec):
        paths = list_images(spec)
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = sorted(p for p in glob.glob(spec, recursive=True)
                       if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS))
    return paths


def check_flags():
    """Validates the flags; returns (model path, inputs, chain or None, tile size or None)."""
    from hmsa_keras.inference import parse_tile_size

    model_path = common.model_path_checked("model_dir", FLAGS.model_dir)
    if not FLAGS.input:
        raise common.usage("input", "is required: an image file, a folder of images or a glob pattern")
    inputs = find_inputs(FLAGS.input)
    if not inputs:
        raise common.usage("input", f"no images found for {FLAGS.input!r} (file, folder or glob of "
                           ".png/.jpg/... files)")
    if not FLAGS.output_dir and not FLAGS.pseudo_label_dir:
        raise common.usage("output_dir", "is required (or give --pseudo_label_dir to only auto-label)")
    if not FLAGS.output_dir and (FLAGS.save_raw or FLAGS.save_probs or FLAGS.save_attention):
        raise common.usage("output_dir", "is required for --save_raw/--save_probs/--save_attention")
    chain = common.parse_chain("scales", FLAGS.scales) if FLAGS.scales is not None else None
    try:
        tile = parse_tile_size(FLAGS.tile_size)
    except ValueError as exc:
        raise common.usage("tile_size", str(exc)) from None
    if tile and FLAGS.tile_overlap >= min(tile):
        raise common.usage("tile_overlap", f"must be smaller than the tile ({FLAGS.tile_overlap} >= {min(tile)})")
    stems = {}
    for p in inputs:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise common.usage("input", f"two inputs share the name {stem!r} ({stems[stem]}, {p}): outputs "
                               "are named by file stem, give folders without duplicate names")
        stems[stem] = p
    if FLAGS.pseudo_split in ("", ".", "..") or os.sep in FLAGS.pseudo_split:
        raise common.usage("pseudo_split", f"must be a plain folder name, got {FLAGS.pseudo_split!r}")
    return model_path, inputs, chain, tile


class PseudoLabelWriter:
    """Writes a folder dataset of pseudo-labels (see hmsa_keras/data/folder.py)."""

    def __init__(self, root, split, class_names, colors, confidence):
        from hmsa_keras.data.folder import CLASS_FILE

        self.root, self.confidence = root, float(confidence)
        self.images = os.path.join(root, split, "images")
        self.labels = os.path.join(root, split, "labels")
        os.makedirs(self.images, exist_ok=True)
        os.makedirs(self.labels, exist_ok=True)
        path = os.path.join(root, CLASS_FILE)
        spec = {"names": list(class_names), "colors": [list(map(int, c)) for c in colors], "ignore_label": 255}
        if os.path.isfile(path):
            with open(path) as f:
                existing = json.load(f)
            if existing.get("names") != spec["names"]:
                raise app.UsageError(f"--pseudo_label_dir: {path} lists classes {existing.get('names')}, "
                                     f"the model's are {spec['names']}: use another folder")
        else:
            with open(path, "w") as f:
                json.dump(spec, f, indent=2)
        self.stats = []

    def write(self, image_path, probabilities):
        from PIL import Image

        classes = probabilities.argmax(-1).astype(np.uint8)
        low = probabilities.max(-1) < self.confidence
        classes[low] = 255
        stem, ext = os.path.splitext(os.path.basename(image_path))
        shutil.copyfile(image_path, os.path.join(self.images, stem + ext.lower()))
        Image.fromarray(classes, mode="L").save(os.path.join(self.labels, stem + ".png"))
        self.stats.append({"image": os.path.abspath(image_path), "ignored_share": float(low.mean())})

    def close(self, meta):
        with open(os.path.join(self.root, "autolabel.json"), "w") as f:
            json.dump(dict(meta, confidence=self.confidence, images=self.stats), f, indent=2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    model_path, inputs, chain, tile = check_flags()

    import tensorflow as tf
    from PIL import Image

    import hmsa_keras
    from hmsa_keras import visualize as V
    from hmsa_keras.data.io import DataError, read_image
    from hmsa_keras.data.normalization import normalize
    from hmsa_keras.inference import segment_tiled

    _, run_data, run_train = common.run_configs(FLAGS.model_dir)
    if chain is None:
        chain = tuple(sorted(run_train.eval_scales)) if run_train else (0.5, 1.0, 2.0)
    model = hmsa_keras.load_model(model_path)
    names, colors = common.class_table(
        common.data_config(run_data, FLAGS.dataset, FLAGS.data_dir) if (run_data or FLAGS.dataset) else None,
        model.num_classes)
    details = FLAGS.save_attention
    segment = hmsa_keras.api.compiled_segment(model, chain, FLAGS.flip, details)
    pseudo = PseudoLabelWriter(FLAGS.pseudo_label_dir, FLAGS.pseudo_split, names, colors, FLAGS.confidence) \
        if FLAGS.pseudo_label_dir else None
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    log.info("%d image(s), scales %s%s%s", len(inputs), ",".join(f"{s:g}" for s in chain),
             " + flip" if FLAGS.flip else "", f", tiles {tile[0]}x{tile[1]}" if tile else "")
    start = time.perf_counter()
    for n, path in enumerate(inputs, 1):
        try:
            image = read_image(path)
        except DataError as exc:
            raise app.UsageError(str(exc)) from None
        if tile:
            out = segment_tiled(model, normalize(image), tile, FLAGS.tile_overlap, chain, FLAGS.flip,
                                blend=FLAGS.tile_blend, return_details=details)
            logits, attention = out["logits"], out.get("attention", {})
        else:
            out = segment(normalize(image[None]))
            logits = out["logits"][0].numpy()
            attention = {s: a[0, ..., 0].numpy() for s, a in out["attention"].items()} if details else {}
        probs = tf.nn.softmax(logits).numpy()
        classes = logits.argmax(-1).astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        dest = lambda suffix: os.path.join(FLAGS.output_dir, stem + suffix)  # noqa: E731
        if FLAGS.output_dir and FLAGS.visualize:
            colored = V.colorize(classes, colors)
            Image.fromarray(colored).save(dest("_color.png"))
            Image.fromarray(V.overlay(image, colored, FLAGS.overlay_alpha)).save(dest("_overlay.png"))
        if FLAGS.save_raw:
            Image.fromarray(classes, mode="L").save(dest("_label.png"))
        if FLAGS.save_probs:
            np.save(dest("_probs.npy"), probs.astype(np.float16))
        for s, a in attention.items():
            Image.fromarray(V.attention_to_rgb(a)).save(dest(f"_attention_{s:g}.png"))
        if pseudo:
            pseudo.write(path, probs)
        log.info("[%d/%d] %s (%.2f s/image)", n, len(inputs), path, (time.perf_counter() - start) / n)
    if pseudo:
        pseudo.close({"model": os.path.abspath(model_path), "scales": list(chain), "flip": FLAGS.flip})
        print(f"wrote {len(inputs)} pseudo-label(s) to {FLAGS.pseudo_label_dir} "
              f"(mean ignored share {np.mean([s['ignored_share'] for s in pseudo.stats]):.3f})")
    if FLAGS.output_dir:
        print(f"wrote predictions for {len(inputs)} image(s) to {FLAGS.output_dir}")
    return 0


def run():
    """Console entry point ``hmsa-predict``."""
    common.run_app(main, FLAGS)


def run_autolabel():
    """Console entry point ``hmsa-autolabel``: ``hmsa-predict`` without the visualisations;
    ``--pseudo_label_dir`` is required."""
    FLAGS.set_default("visualize", False)
    original = main

    def autolabel_main(argv):
        if not FLAGS.pseudo_label_dir:
            raise common.usage("pseudo_label_dir", "is required for hmsa-autolabel")
        return original(argv)

    common.run_app(autolabel_main, FLAGS)


if __name__ == "__main__":
    sys.exit(run())
