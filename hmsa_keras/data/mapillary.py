"""Mapillary Vistas v1.2, 65 classes (+ "unlabeled" = raw 65 -> ignore).

Layout (as released)::

    data_dir/config.json                          class names and colours ("labels" list)
    data_dir/{training,validation,testing}/images/<key>.jpg
    data_dir/{training,validation,testing}/labels/<key>.png   (palette PNG, index = class id)

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
NUM_CLASSES = 65
DEFAULT_EVAL_LONG_EDGE = 2177


def dataset_info(config) -> DatasetInfo:
    path = os.path.join(config.data_dir, "config.json")
    try:
        with open(path) as f:
            labels = json.load(f)["labels"]
    except FileNotFoundError:
        raise DataError(f"{path}: Mapillary class file does not exist (it ships with the dataset)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a Mapillary config.json with a 'labels' list ({exc})") from None
    if len(labels) < NUM_CLASSES:
        raise DataError(f"{path}: {len(labels)} labels listed, expected at least {NUM_CLASSES} (v1.2)")
    names = [l.get("readable", l.get("name")) for l in labels[:NUM_CLASSES]]
    colors = [tuple(int(v) for v in l["color"]) for l in labels[:NUM_CLASSES]]
    # Everything past the 65 training classes (v1.2: 65 = unlabeled) is ignored.
    lut = identity_lut(NUM_CLASSES, ignore_values=tuple(range(NUM_CLASSES, len(labels))) + (IGNORE,))
    return DatasetInfo("mapillary", NUM_CLASSES, IGNORE, names, colors, lut)


def list_pairs(config, split):
    folder = os.path.join(config.data_dir, SPLITS.get(split, split))
    return pair_by_stem(os.path.join(folder, "images"), os.path.join(folder, "labels"))
