"""Cityscapes: official labelId -> trainId table, file layout, and the TFDS path."""

import numpy as np
import pytest
from PIL import Image

from hmsa_keras.config import DataConfig
from hmsa_keras.data import build_dataset, get_dataset_info, iter_pairs
from hmsa_keras.data.labels import (
    CITYSCAPES_LABELS,
    cityscapes_label_id_lut,
    cityscapes_train_id_to_label_id,
)

# (labelId, trainId) from the official cityscapesScripts table, written out independently.
OFFICIAL = {
    0: 255,
    1: 255,
    2: 255,
    3: 255,
    4: 255,
    5: 255,
    6: 255,
    7: 0,
    8: 1,
    9: 255,
    10: 255,
    11: 2,
    12: 3,
    13: 4,
    14: 255,
    15: 255,
    16: 255,
    17: 5,
    18: 255,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    29: 255,
    30: 255,
    31: 16,
    32: 17,
    33: 18,
}
TRAIN_NAMES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]


def test_label_table_matches_official():
    lut = cityscapes_label_id_lut()
    assert {i: int(lut[i]) for i in range(34)} == OFFICIAL
    assert (lut[34:] == -1).all()  # anything else is not in the table
    back = cityscapes_train_id_to_label_id()
    for label_id, train_id in OFFICIAL.items():
        if train_id != 255:
            assert back[train_id] == label_id
    assert len([l for l in CITYSCAPES_LABELS if 0 <= l.train_id < 255]) == 19


def _fake_tree(root, kind):
    """Two cities with one 8x16 frame each; labels hold every labelId 0..33 (or trainIds)."""
    raw = (np.arange(8 * 16) % 34).astype(np.uint8).reshape(8, 16)
    for city in ("aachen", "bochum"):
        stem = f"{city}_000000_000019"
        img_dir, gt_dir = root / "leftImg8bit" / "val" / city, root / "gtFine" / "val" / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        Image.fromarray(np.full((8, 16, 3), 100, np.uint8)).save(
            img_dir / f"{stem}_leftImg8bit.png"
        )
        if kind == "label_ids":
            Image.fromarray(raw).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        else:
            Image.fromarray(cityscapes_label_id_lut()[raw].astype(np.uint8)).save(
                gt_dir / f"{stem}_gtFine_labelTrainIds.png"
            )
        # A colour file that must not be picked up as a label.
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(gt_dir / f"{stem}_gtFine_color.png")
    return raw


@pytest.mark.parametrize("kind", ["label_ids", "train_ids"])
def test_file_layout_maps_labels(tmp_path, kind):
    raw = _fake_tree(tmp_path, kind)
    config = DataConfig(dataset="cityscapes", data_dir=str(tmp_path), train_split="val")
    info = get_dataset_info(config, "val")
    assert info.num_classes == 19 and info.class_names == TRAIN_NAMES and info.ignore_label == 255
    pairs = iter_pairs(config, "val")
    assert [p[0].split("/")[-2] for p in pairs] == ["aachen", "bochum"]
    assert all(
        p[1].endswith("_labelTrainIds.png" if kind == "train_ids" else "_labelIds.png")
        for p in pairs
    )
    expected = np.vectorize(OFFICIAL.get)(raw)
    batches = list(build_dataset(config, "val", training=False, batch_size=1))
    assert len(batches) == 2
    for image, label in batches:
        assert image.shape == (1, 8, 16, 3) and label.dtype.name == "int32"
        np.testing.assert_array_equal(label[0].numpy(), expected)


def test_tfds_maps_label_ids_offline():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    raw = np.array([[7, 26, 0, 33, 24, 9, 23, 11]], np.uint8)

    def as_dataset_fn(self, split, **kwargs):
        n = 3
        return tf.data.Dataset.from_tensor_slices(
            {
                "image_id": tf.constant([f"frankfurt_000000_{i:06d}" for i in range(n)]),
                "image_left": tf.zeros((n, 1, 8, 3), tf.uint8),
                "segmentation_label": tf.constant(np.repeat(raw[None, ..., None], n, 0)),
            }
        )

    with tfds.testing.mock_data(num_examples=3, as_dataset_fn=as_dataset_fn):
        config = DataConfig(
            dataset="cityscapes_tfds", data_dir="/nonexistent/tfds", crop_size=(4, 4)
        )
        labels = [
            y.numpy()[0] for _, y in build_dataset(config, "val", training=False, batch_size=1)
        ]
        assert len(labels) == 3
        np.testing.assert_array_equal(labels[0], [[0, 13, 255, 18, 11, 255, 10, 2]])
        x, y = next(iter(build_dataset(config, "train", training=True, batch_size=2)))
        assert x.shape == (2, 4, 4, 3) and set(np.unique(y.numpy())) <= {0, 13, 255, 18, 11, 10, 2}
