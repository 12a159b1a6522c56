"""CamVid from the shared copy (SegNet layout)."""

from pathlib import Path

import numpy as np
import pytest

from hmsa_keras.config import DataConfig
from hmsa_keras.data import build_dataset, get_dataset_info, iter_pairs, load_image_label

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"
pytestmark = pytest.mark.skipif(
    not (CAMVID / "train").is_dir(),
    reason=f"CamVid not found at {CAMVID} (expected ../shared/data/camvid beside the repo)",
)


def test_camvid_classes_and_files(tmp_path):
    config = DataConfig(dataset="camvid", data_dir=str(CAMVID), cache_dir=str(tmp_path))
    info = get_dataset_info(config)
    assert info.num_classes == 11 and info.ignore_label == 255
    assert info.class_names == [
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
    ]
    assert info.colors[0] == (128, 128, 128) and info.colors[3] == (128, 64, 128)
    train, val = iter_pairs(config, "train"), iter_pairs(config, "val")
    assert (len(train), len(val)) == (367, 101)
    assert all(
        Path(i).name == Path(l).name and Path(l).parent.name == "trainannot" for i, l in train
    )
    image, label = load_image_label(*train[0], info)
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    values = set(np.unique(label).tolist())
    assert values <= set(range(11)) | {255} and 255 in values  # raw 11 (Unlabelled) became ignore
    assert len(values) > 5


def test_camvid_pipelines(tmp_path):
    config = DataConfig(
        dataset="camvid",
        data_dir=str(CAMVID),
        crop_size=(64, 96),
        cache_dir=str(tmp_path),
        validate="paths",
    )
    x, y = next(iter(build_dataset(config, "val", training=False, batch_size=2)))
    assert x.shape == (2, 360, 480, 3) and y.shape == (2, 360, 480)
    x, y = next(iter(build_dataset(config, "train", training=True, batch_size=2)))
    assert x.shape == (2, 64, 96, 3) and y.dtype.name == "int32"
    assert set(np.unique(y.numpy()).tolist()) <= set(range(11)) | {255}
