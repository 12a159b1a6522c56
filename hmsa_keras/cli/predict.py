"""hmsa-predict: segment images (files, folders or globs) and write what you ask for.

    hmsa-predict --model_dir=runs/qs --input=street.png --output_dir=out --scales=0.5,1.0,2.0 --flip
    hmsa-predict --model_dir=runs/qs --input='photos/*.jpg' --output_dir=out --save_raw \\
                 --save_probs --save_attention
    hmsa-predict --model_dir=runs/qs --input=huge.png --output_dir=out --tile_size=1024x1024 \\
                 --tile_overlap=256

Per image ``<stem>``: ``<stem>_color.png`` (colourised classes) and ``<stem>_overlay.png``
(unless ``--novisualize``); ``--save_raw``: ``<stem>_label.png`` (class ids, uint8);
``--save_probs``: ``<stem>_probs.npy`` (float16 [H, W, K] softmax); ``--save_attention``:
``<stem>_attention_<scale>.png`` per scale of the chain. The chain defaults to the run's
(``eval_scales``/``eval_flip`` of its config.json).

Auto-labelling (``hmsa-autolabel`` is the same tool without the visualisations):

    hmsa-autolabel --model_dir=runs/teacher --input=unlabelled/ --pseudo_label_dir=pseudo \\
                   --confidence=0.5

writes a folder dataset (hmsa_keras/data/folder.py, PseudoLabelWriter); train with
``hmsa-train --pseudo_label_dir=pseudo``.
"""

from __future__ import annotations

import glob
import logging
import os
import time

import numpy as np
from absl import app

from hmsa_keras.cli import common
from hmsa_keras.cli.tool import Tool, usage
from hmsa_keras.config import DataConfig, PredictConfig, TrainConfig

log = logging.getLogger("hmsa_keras")


def _tool(name, doc):
    return Tool(
        name=name,
        doc=doc,
        options=PredictConfig,
        recipe_fields={DataConfig: ("dataset", "data_dir"), TrainConfig: common.MODEL_DIR_FIELDS},
        aliases=dict(common.INFERENCE_ALIASES),
        help_overrides=common.INFERENCE_HELP,
    )


TOOL = _tool("hmsa-predict", __doc__)
AUTOLABEL_TOOL = _tool(
    "hmsa-autolabel",
    "hmsa-autolabel: hmsa-predict without the visualisations, writing "
    "pseudo-labels (--pseudo_label_dir is required).\n\n" + __doc__,
)
AUTOLABEL_TOOL.flags.set_default("visualize", False)


def find_inputs(spec):
    """Sorted image paths for a file, a folder (non-recursive) or a glob pattern."""
    from hmsa_keras.data.io import IMAGE_EXTENSIONS, list_images

    if os.path.isdir(spec):
        return list_images(spec)
    if os.path.isfile(spec):
        return [spec]
    return sorted(
        p
        for p in glob.glob(spec, recursive=True)
        if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)
    )


def check_flags(tool: Tool, opts: PredictConfig):
    """Validates the flags; returns (model path, inputs). Raises UsageError naming the flag."""
    model_path = common.model_path_checked(
        tool.flags["model_dir"].value if tool.given("model_dir") else None
    )
    if not opts.input:
        raise usage("input", "is required: an image file, a folder of images or a glob pattern")
    inputs = find_inputs(opts.input)
    if not inputs:
        raise usage(
            "input",
            f"no images found for {opts.input!r} (file, folder or glob of .png/.jpg/... files)",
        )
    if not opts.output_dir and not opts.pseudo_label_dir:
        raise usage("output_dir", "is required (or give --pseudo_label_dir to only auto-label)")
    if not opts.output_dir and (opts.save_raw or opts.save_probs or opts.save_attention):
        raise usage("output_dir", "is required for --save_raw/--save_probs/--save_attention")
    if opts.tile_size and opts.tile_overlap >= min(opts.tile_size):
        raise usage(
            "tile_overlap",
            f"must be smaller than the tile ({opts.tile_overlap} >= {min(opts.tile_size)})",
        )
    stems = {}
    for p in inputs:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise usage(
                "input",
                f"two inputs share the name {stem!r} ({stems[stem]}, {p}): outputs are named "
                "by file stem, give folders without duplicate names",
            )
        stems[stem] = p
    if opts.pseudo_split in ("", ".", "..") or os.sep in opts.pseudo_split:
        raise usage("pseudo_split", f"must be a plain folder name, got {opts.pseudo_split!r}")
    return model_path, inputs


def predict(tool: Tool):
    opts = tool.config(PredictConfig)
    model_path, inputs = check_flags(tool, opts)
    from PIL import Image

    import hmsa_keras
    from hmsa_keras import visualize as V
    from hmsa_keras.data.folder import PseudoLabelWriter
    from hmsa_keras.data.io import DataError, read_image

    data_cfg, train_cfg, found = common.run_configs(tool, model_path)
    chain, flip = train_cfg.eval_scales, train_cfg.eval_flip
    model = hmsa_keras.load_model(model_path)
    names, colors = common.class_table(
        data_cfg if (found or tool.given("dataset")) else None, model.num_classes
    )
    try:
        pseudo = (
            PseudoLabelWriter(
                opts.pseudo_label_dir, opts.pseudo_split, names, colors, opts.confidence
            )
            if opts.pseudo_label_dir
            else None
        )
    except DataError as exc:
        raise usage("pseudo_label_dir", str(exc)) from None
    if opts.output_dir:
        os.makedirs(opts.output_dir, exist_ok=True)
    log.info(
        "%d image(s), scales %s%s%s",
        len(inputs),
        ",".join(f"{s:g}" for s in chain),
        " + flip" if flip else "",
        f", tiles {opts.tile_size[0]}x{opts.tile_size[1]}" if opts.tile_size else "",
    )
    start = time.perf_counter()
    for n, path in enumerate(inputs, 1):
        try:
            image = read_image(path)
            out = hmsa_keras.segment_image(
                model,
                image,
                chain,
                flip,
                return_details=opts.save_attention,
                tile_size=opts.tile_size,
                tile_overlap=opts.tile_overlap,
                tile_blend=opts.tile_blend,
                name=path,
            )
        except (DataError, ValueError) as exc:  # the reader's and the contract's messages name it
            text = str(exc)
            raise app.UsageError(text if text.startswith(path) else f"{path}: {text}") from None
        classes = out["classes"].astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        dest = lambda suffix: os.path.join(opts.output_dir, stem + suffix)  # noqa: E731
        if opts.output_dir and opts.visualize:
            colored = V.colorize(classes, colors)
            Image.fromarray(colored).save(dest("_color.png"))
            Image.fromarray(V.overlay(image, colored, opts.overlay_alpha)).save(
                dest("_overlay.png")
            )
        if opts.save_raw:
            Image.fromarray(classes, mode="L").save(dest("_label.png"))
        if opts.save_probs:
            np.save(dest("_probs.npy"), out["probabilities"].astype(np.float16))
        for s, a in out.get("attention", {}).items():
            Image.fromarray(V.attention_to_rgb(a)).save(dest(f"_attention_{s:g}.png"))
        if pseudo:
            pseudo.write(path, out["probabilities"])
        log.info(
            "[%d/%d] %s (%.2f s/image)", n, len(inputs), path, (time.perf_counter() - start) / n
        )
    if pseudo:
        pseudo.close({"model": os.path.abspath(model_path), "scales": list(chain), "flip": flip})
        print(
            f"wrote {len(inputs)} pseudo-label(s) to {opts.pseudo_label_dir} "
            f"(mean ignored share {np.mean([s['ignored_share'] for s in pseudo.stats]):.3f})"
        )
    if opts.output_dir:
        print(f"wrote predictions for {len(inputs)} image(s) to {opts.output_dir}")
    return 0


def main(argv):
    return predict(TOOL)


def autolabel_main(argv):
    if not AUTOLABEL_TOOL.given("pseudo_label_dir"):
        raise usage("pseudo_label_dir", "is required for hmsa-autolabel")
    return predict(AUTOLABEL_TOOL)


def run():
    """Console entry point ``hmsa-predict``."""
    TOOL.run(main)


def run_autolabel():
    """Console entry point ``hmsa-autolabel``: ``hmsa-predict`` without the visualisations;
    ``--pseudo_label_dir`` is required."""
    AUTOLABEL_TOOL.run(autolabel_main)


if __name__ == "__main__":
    run()
