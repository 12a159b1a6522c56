"""hmsa-data: inspect and check datasets.

    hmsa-data check --dataset=camvid --data_dir=DIR --split=train
    hmsa-data info  --dataset=cityscapes --data_dir=DIR
    hmsa-data check --flagfile=flags/camvid_mobilenetv2.cfg --data_dir=DIR

``check`` decodes every image/label pair of the split, reports EVERY problem (missing
partner, unreadable or corrupt file, refused image mode, label/image size mismatch, label ids
outside the class table, a class table of the wrong length, empty split, wrong path) with its
file name, lists the files the readers handle but you should know about as warnings
(EXIF-rotated, 16-bit grey; docs/data.md "Image files"), prints the number of images and the
class pixel histogram, and exits with status 1 when there was any problem. ``info`` prints
the class table.
"""

from __future__ import annotations

import sys

from hmsa_keras.cli.tool import Tool
from hmsa_keras.config import DataConfig, DataToolConfig

COMMANDS = ("check", "info")

TOOL = Tool(
    name="hmsa-data",
    doc=__doc__,
    options=DataToolConfig,
    recipe_fields={DataConfig: None},
    positional=COMMANDS,
)


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
    print(
        f"dataset {dinfo.name}: {dinfo.num_classes} classes, ignore label {dinfo.ignore_label}",
        file=out,
    )
    for i, (name, color) in enumerate(zip(dinfo.class_names, dinfo.colors)):
        print(f"  {i:3d}  {name:28s} rgb{tuple(color)}", file=out)
    return 0


def main(argv):
    config, opts = TOOL.config(DataConfig), TOOL.config(DataToolConfig)
    if argv[0] == "check":
        return check(config, opts.split, opts.workers)
    return info(config)


def run():
    """Console entry point ``hmsa-data``."""
    TOOL.run(main)


if __name__ == "__main__":
    run()
