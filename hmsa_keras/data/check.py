"""Scan a whole split and report every problem at once (``hmsa-data check``).

Problems (the split cannot be used as is: missing partners, unreadable files, size
mismatches, ids outside the class table, refused image modes) make the exit status 1;
warnings are files the readers handle but the user should know about (EXIF-rotated images
or labels, used as displayed; 16-bit grey images reduced to 8 bits), listed without failing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import List, Optional

import numpy as np

from hmsa_keras.data import cityscapes, synthetic
from hmsa_keras.data.io import DataError, check_pair
from hmsa_keras.data.labels import DatasetInfo
from hmsa_keras.data.pipeline import check_config, get_dataset_info, list_split


@dataclasses.dataclass
class ScanReport:
    """Result of :func:`scan_dataset`: counts, class pixel histogram, problems."""

    dataset: str
    split: str
    num_images: int = 0
    histogram: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
    problems: List[str] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    info: Optional[DatasetInfo] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"dataset {self.dataset}, split {self.split!r}: {self.num_images} image(s) scanned"
        ]
        total = int(self.histogram.sum())
        if self.info is not None and total:
            lines.append(f"  {'id':>3s}  {'class':24s} {'pixels':>14s} {'share':>8s}")
            for c, name in enumerate(self.info.class_names):
                n = int(self.histogram[c])
                lines.append(f"  {c:3d}  {name[:24]:24s} {n:14d} {100.0 * n / total:7.3f}%")
                if n == 0:
                    lines[-1] += "  (absent)"
            n = int(self.histogram[255])
            lines.append(f"  {255:3d}  {'(ignore)':24s} {n:14d} {100.0 * n / total:7.3f}%")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s) (handled; docs/data.md, Image files):")
            lines += [f"  - {w}" for w in self.warnings]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def scan_dataset(config, split: str, workers: int = 4) -> ScanReport:
    """Decode every example of ``split`` and collect all problems (never raises DataError)."""
    report = ScanReport(config.dataset, split)
    try:
        check_config(config)
        report.info = info = get_dataset_info(config, split)
    except DataError as exc:
        report.problems.append(str(exc))
        return report

    if config.dataset == "synthetic":
        size = tuple(config.synthetic_image_size)
        for i in range(synthetic.split_size(config, split)):
            _, label = synthetic.generate(config.seed, split, i, size)
            report.histogram += np.bincount(label.ravel(), minlength=256)
            report.num_images += 1
    elif config.dataset == "cityscapes_tfds":
        try:
            ds, _ = cityscapes.tfds_dataset(config, split)
            for _, label in ds.as_numpy_iterator():
                report.histogram += np.bincount(label.ravel(), minlength=256)
                report.num_images += 1
        except Exception as exc:  # DataError or a tf error naming the example
            report.problems.append(str(exc).splitlines()[0])
    else:
        pairs, problems = list_split(config, split)
        report.problems += problems
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:

            def one(pair):
                notes = []
                found, hist = check_pair(pair[0], pair[1], info, warnings=notes)
                return found, hist, notes

            for found, hist, notes in pool.map(one, pairs):
                report.problems += found
                report.warnings += notes
                if hist is not None:
                    report.histogram += hist
                report.num_images += 1
    if report.num_images == 0 and not report.problems:
        report.problems.append(
            f"{config.dataset} split {split!r} in {config.data_dir}: the split is empty"
        )
    return report
