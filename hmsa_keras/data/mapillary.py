"""Mapillary Vistas v1.2 (65 classes) and v2.0 (123 classes); the last label of each
("unlabeled") is ignore.

Layout, as released (``DataConfig.mapillary_version`` chooses the version, default 1.2 as
the reference's recipes)::

    v1.2 release:  data_dir/config.json                               66 labels
                   data_dir/{training,validation,testing}/images/<key>.jpg
                   data_dir/{training,validation,testing}/labels/<key>.png
    v2.0 release:  data_dir/config_v1.2.json, data_dir/config_v2.0.json    66 / 124 labels
                   data_dir/{training,validation,testing}/images/<key>.jpg
                   data_dir/{training,validation}/v1.2/labels/<key>.png
                   data_dir/{training,validation}/v2.0/labels/<key>.png

The class file is ``config_v<version>.json`` when present, else ``config.json``; the label
folder ``<split>/v<version>/labels`` when present, else ``<split>/labels``. Label files are
palette PNGs whose index is the label id. A class file whose number of labels is not the
chosen version's (66 or 124) stops with a DataError naming the file and both counts (a v2.0
table read as v1.2 would silently turn every id past 65 into ignore).

Split names ``train``/``val``/``test`` are accepted for ``training``/``validation``/``testing``.
Evaluation resizes images so that the long edge is at most ``eval_long_edge``
(reference: 2177) when the config does not set one.
"""

from __future__ import annotations

import json
import os

from hmsa_keras.data.io import DataError, pair_by_stem
from hmsa_keras.data.labels import IGNORE, DatasetInfo, identity_lut

SPLITS = {"train": "training", "val": "validation", "test": "testing"}
# Labels listed in each version's class file; the last one ("unlabeled") is ignore.
VERSIONS = {"1.2": 66, "2.0": 124}
DEFAULT_VERSION = "1.2"
NUM_CLASSES = VERSIONS[DEFAULT_VERSION] - 1  # 65, the reference's (datasets/mapillary.py)
DEFAULT_EVAL_LONG_EDGE = 2177


def _version(config) -> str:
    version = str(getattr(config, "mapillary_version", None) or DEFAULT_VERSION)
    if version not in VERSIONS:
        raise DataError(f"mapillary_version={version!r}: choose one of {', '.join(VERSIONS)}")
    return version


def class_file(config) -> str:
    """The class file of the chosen version (see module docstring)."""
    versioned = os.path.join(config.data_dir, f"config_v{_version(config)}.json")
    return versioned if os.path.isfile(versioned) else os.path.join(config.data_dir, "config.json")


def dataset_info(config) -> DatasetInfo:
    """The class table of the chosen version. Raises DataError naming the class file when it
    is missing, malformed, or lists another number of labels than the version has."""
    version = _version(config)
    path = class_file(config)
    try:
        with open(path) as f:
            labels = json.load(f)["labels"]
        names = [str(l.get("readable", l.get("name"))) for l in labels]
        colors = [tuple(int(v) for v in l["color"]) for l in labels]
    except FileNotFoundError:
        raise DataError(
            f"{path}: Mapillary class file does not exist (it ships with the dataset)"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: not a Mapillary config.json with a 'labels' list of "
            f"{{'name', 'color'}} entries ({exc.__class__.__name__}: {exc})"
        ) from None
    expected = VERSIONS[version]
    if len(labels) != expected:
        other = [v for v, n in VERSIONS.items() if n == len(labels)]
        hint = (
            (
                f"it is the v{other[0]} class table: pass --mapillary_version={other[0]} (and its "
                f"label files)"
            )
            if other
            else "is it a Mapillary Vistas class file?"
        )
        raise DataError(
            f"{path}: {len(labels)} labels listed, but Mapillary Vistas v{version} has "
            f"{expected} ({expected - 1} classes + unlabeled); {hint}"
        )
    last = str(labels[-1].get("name", "")) + " " + names[-1]
    if "unlabeled" not in last.lower():
        raise DataError(
            f"{path}: the last label should be 'unlabeled' (ignored), found "
            f"{names[-1]!r}: the file is not the class table as released"
        )
    num_classes = expected - 1
    lut = identity_lut(num_classes, ignore_values=(num_classes, IGNORE))
    return DatasetInfo(
        "mapillary", num_classes, IGNORE, names[:num_classes], colors[:num_classes], lut
    )


def list_pairs(config, split):
    folder = os.path.join(config.data_dir, SPLITS.get(split, split))
    labels = os.path.join(folder, f"v{_version(config)}", "labels")
    if not os.path.isdir(labels):
        labels = os.path.join(folder, "labels")
    return pair_by_stem(os.path.join(folder, "images"), labels)
