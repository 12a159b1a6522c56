"""``hmsa-data``: inspect and check datasets.

    hmsa-data check --dataset=camvid --data_dir=DIR --split=train
    hmsa-data info  --dataset=cityscapes --data_dir=DIR

``check`` decodes every image/label pair of the split, reports EVERY problem
(missing partner, unreadable or corrupt file, label/image size mismatch,
label ids outside the class table, empty split, wrong path) with its file
name, prints the number of images and the class pixel histogram, and exits
with status 1 when there was any problem. ``info`` prints the class table.
"""

from __future__ import annotations

import sys

from absl import app, flags

COMMANDS = ("check", "info")


def define_flags(flag_values=flags.FLAGS):
    """Define this tool's flags (idempotent, so other CLIs can share a process)."""

    def define(kind, name, default, help_text, **kw):
        if name not in flag_values:
            getattr(flags, "DEFINE_" + kind)(name, default, help_text, flag_values=flag_values, **kw)

    define("string", "dataset", "synthetic", "synthetic, camvid, cityscapes, cityscapes_tfds, mapillary, folder")
    define("string", "data_dir", None, "dataset root")
    define("string", "split", "train", "split to scan")
    define("string", "tfds_manual_dir", None, "cityscapes_tfds: folder holding the official zips")
    define("integer", "workers", 4, "decoding threads")


def check(config, split, workers=4, out=sys.stdout) -> int:
    """Scan ``split``, print the report, return the exit status (0 = no problems)."""
    from hmsa_keras.data.check import scan_dataset

    report = scan_dataset(config, split, workers=workers)
    print(report.summary(), file=out)
    return 0 if report.ok else 1


def info(config, out=sys.stdout) -> int:
    from hmsa_keras.data import DataError, get_dataset_info

    try:
        dinfo = get_dataset_info(config)
    except DataError as exc:
        print(f"error: {exc}", file=out)
        return 1
    print(f"dataset {dinfo.name}: {dinfo.num_classes} classes, ignore label {dinfo.ignore_label}", file=out)
    for i, (name, color) in enumerate(zip(dinfo.class_names, dinfo.colors)):
        print(f"  {i:3d}  {name:28s} rgb{tuple(color)}", file=out)
    return 0


def main(argv):
    from hmsa_keras.config import DataConfig

    FLAGS = flags.FLAGS
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: hmsa-data {{{'|'.join(COMMANDS)}}} --dataset=NAME --data_dir=DIR [--split=SPLIT]")
    config = DataConfig(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, tfds_manual_dir=FLAGS.tfds_manual_dir)
    if argv[1] == "check":
        return check(config, FLAGS.split, FLAGS.workers)
    return info(config)


def run():
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
