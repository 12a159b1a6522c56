"""hmsa-convert: a reference (NVIDIA/semantic-segmentation) checkpoint -> an hmsa_keras model.

    hmsa-convert --checkpoint=cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth \\
                 --output_dir=models/cityscapes_hrnet_ocr --dataset=cityscapes
    hmsa-eval --model_dir=models/cityscapes_hrnet_ocr --data_dir=...

Reads ``{'state_dict': ...}`` snapshots (with or without DataParallel's ``module.``),
bare state_dicts (``.pth``, or ``.npz`` without PyTorch) and the HRNetV2 ImageNet trunk
file; writes ``best.keras``, ``config.json`` (dataset, the reference's evaluation chain)
and ``conversion.txt`` (every tensor mapped). Reading ``.pth`` needs PyTorch:
``pip install "hmsa_keras[convert]"``. See docs/hrnet_ocr.md.
"""

from __future__ import annotations

import logging

from absl import flags

from hmsa_keras.cli import common

FLAGS = flags.FlagValues()
log = logging.getLogger("hmsa_keras")

flags.DEFINE_string(
    "checkpoint",
    None,
    "Reference checkpoint: .pth (needs PyTorch) or a .npz state_dict.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir", None, "Where best.keras, config.json and conversion.txt go.", flag_values=FLAGS
)
flags.DEFINE_enum(
    "dataset",
    None,
    ["cityscapes", "mapillary"],
    "Dataset the checkpoint was trained "
    "on: class count (19 / 65), class names and evaluation chain.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "num_classes",
    None,
    "Override the dataset's class count (must match the checkpoint's classifier).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "allow_pickle",
    False,
    "Read .pth files holding arbitrary Python objects (only for files you trust).",
    flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "overwrite", False, "Replace an existing best.keras in --output_dir.", flag_values=FLAGS
)
flags.DEFINE_boolean(
    "list_tensors",
    False,
    "Also print every mapped tensor (always written to conversion.txt).",
    flag_values=FLAGS,
)


def check_flags():
    for name in ("checkpoint", "output_dir", "dataset"):
        if not FLAGS[name].value:
            raise common.usage(name, "is required")


def main(argv):
    del argv
    check_flags()
    from hmsa_keras.convert import CheckpointError, convert_checkpoint

    try:
        result = convert_checkpoint(
            FLAGS.checkpoint,
            FLAGS.output_dir,
            FLAGS.dataset,
            num_classes=FLAGS.num_classes,
            allow_pickle=FLAGS.allow_pickle,
            overwrite=FLAGS.overwrite,
        )
    except (CheckpointError, FileExistsError, ImportError) as exc:
        raise common.usage(
            "checkpoint" if not isinstance(exc, FileExistsError) else "output_dir", str(exc)
        ) from None
    if FLAGS.list_tensors:
        for line in result["mapped"]:
            print(line)
    print(
        f"{result['kind']} checkpoint: {len(result['mapped'])} tensors mapped, "
        f"{len(result['unused'])} unused, {len(result['fresh'])} layers at their initialisation"
        + (
            f" ({', '.join(result['fresh'][:6])}{', ...' if len(result['fresh']) > 6 else ''})"
            if result["fresh"]
            else ""
        )
    )
    print(f"model: {result['model_path']}\nconfig: {result['config_path']}")


def run():
    common.run_app(main, FLAGS)


if __name__ == "__main__":
    run()
