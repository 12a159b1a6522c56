"""The TensorFlow-free PyDataset pipeline: geometry against the tf.data augmentation, the
padding, the readers, determinism."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from hmsa_keras.config import DataConfig
from hmsa_keras.conventions import IGNORE_LABEL
from hmsa_keras.data import synthetic
from hmsa_keras.data.pydataset import SegmentationPyDataset, normalize, scale_crop_flip


def _example(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
        rng.integers(0, 5, (h, w)).astype(np.uint8),
    )


def test_scale_and_crop_match_the_tf_data_augmentation():
    """With a fixed scale and a crop the size of the scaled image (one possible window), the
    NumPy geometry equals hmsa_keras.data.augment.scale_crop's (bilinear image, nearest label)."""
    tf = pytest.importorskip("tensorflow")
    from hmsa_keras.data import augment

    image, label = _example()
    for scale, crop in ((1.5, (60, 90)), (0.7, (28, 42)), (1.0, (40, 60))):
        want_img, want_lbl, valid = augment.scale_crop(
            tf.constant(image),
            tf.constant(label),
            tf.constant([1, 2], tf.int64),
            crop,
            (scale, scale),
        )
        assert bool(np.all(valid.numpy()))
        got_img, got_lbl = scale_crop_flip(
            image, label, np.random.default_rng(0), crop, (scale, scale), hflip=False
        )
        np.testing.assert_allclose(got_img, normalize(want_img.numpy()), atol=1e-4)
        np.testing.assert_array_equal(got_lbl, want_lbl.numpy())


def test_crop_larger_than_the_image_pads_with_mean_colour_and_ignore():
    image, label = _example(20, 30)
    img, lbl = scale_crop_flip(
        image, label, np.random.default_rng(3), (32, 48), (1.0, 1.0), hflip=False
    )
    assert img.shape == (32, 48, 3) and img.dtype == np.float32 and lbl.dtype == np.int32
    inside = np.argwhere(lbl != IGNORE_LABEL)
    (y0, x0), (y1, x1) = inside.min(0), inside.max(0) + 1
    assert (y1 - y0, x1 - x0) == (20, 30)
    np.testing.assert_array_equal(lbl[y0:y1, x0:x1], label)
    np.testing.assert_allclose(img[y0:y1, x0:x1], normalize(image), atol=1e-6)
    outside = lbl == IGNORE_LABEL
    assert outside.sum() == 32 * 48 - 20 * 30 and np.all(img[outside] == 0.0)


def test_flip_mirrors_image_and_label_together():
    image, label = _example(16, 24)
    flips = 0
    for seed in range(8):
        a = scale_crop_flip(
            image, label, np.random.default_rng(seed), (16, 24), (1.0, 1.0), hflip=True
        )
        b = scale_crop_flip(
            image, label, np.random.default_rng(seed), (16, 24), (1.0, 1.0), hflip=False
        )
        if not np.array_equal(a[1], b[1]):
            flips += 1
            np.testing.assert_array_equal(a[1], b[1][:, ::-1])
            np.testing.assert_array_equal(a[0], b[0][:, ::-1])
    assert 0 < flips < 8


def test_synthetic_training_batches_are_seeded_and_change_per_epoch():
    cfg = DataConfig(
        dataset="synthetic",
        synthetic_train_size=6,
        synthetic_val_size=3,
        synthetic_image_size=(48, 64),
        crop_size=(32, 40),
        scale_min=0.75,
        scale_max=1.5,
    )
    ds = SegmentationPyDataset(cfg, "train", training=True, batch_size=2)
    assert len(ds) == 3 and ds.num_classes == synthetic.dataset_info().num_classes
    x, y = ds[0]
    assert (
        x.shape == (2, 32, 40, 3)
        and x.dtype == np.float32
        and y.shape == (2, 32, 40)
        and y.dtype == np.int32
    )
    assert set(np.unique(y)) <= set(range(ds.num_classes)) | {IGNORE_LABEL}
    again = SegmentationPyDataset(cfg, "train", training=True, batch_size=2)[0]
    np.testing.assert_array_equal(again[0], x)
    ds.on_epoch_end()
    assert not np.array_equal(ds[0][0], x)
    other = SegmentationPyDataset(
        dataclasses.replace(cfg, seed=1), "train", training=True, batch_size=2
    )[0]
    assert not np.array_equal(other[0], x)


def test_synthetic_evaluation_is_every_image_at_full_size():
    cfg = DataConfig(dataset="synthetic", synthetic_val_size=3, synthetic_image_size=(48, 64))
    ds = SegmentationPyDataset(cfg, "val", training=False, batch_size=2)
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == (1, 48, 64, 3)
    image, label = synthetic.generate(cfg.seed, "val", 2, (48, 64))
    np.testing.assert_allclose(x[0], normalize(image), atol=1e-6)
    np.testing.assert_array_equal(y[0], label)
    with pytest.raises(IndexError):
        ds[2]


def _write_pair(image_path, label_path, h, w, ids, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(image_path)
    Image.fromarray(rng.choice(ids, (h, w)).astype(np.uint8)).save(label_path)


def test_camvid_and_folder_layouts(tmp_path):
    camvid_dir = tmp_path / "camvid"
    for split in ("train", "trainannot"):
        (camvid_dir / split).mkdir(parents=True)
    for i in range(3):
        _write_pair(
            camvid_dir / "train" / f"f{i}.png",
            camvid_dir / "trainannot" / f"f{i}.png",
            24,
            32,
            np.arange(12),
            i,
        )  # 11 = Unlabelled -> ignore
    cfg = DataConfig(dataset="camvid", data_dir=str(camvid_dir), crop_size=(16, 16))
    ds = SegmentationPyDataset(cfg, "train", training=True, batch_size=3)
    x, y = ds[0]
    assert x.shape == (3, 16, 16, 3) and ds.num_classes == 11
    assert IGNORE_LABEL in np.unique(SegmentationPyDataset(cfg, "train", False, 1)[0][1])
    assert set(np.unique(y)) <= set(range(11)) | {IGNORE_LABEL}

    folder_dir = tmp_path / "folder" / "val"
    (folder_dir / "images").mkdir(parents=True)
    (folder_dir / "labels").mkdir()
    (tmp_path / "folder" / "classes.json").write_text(
        json.dumps({"names": ["a", "b"], "ignore_label": 9})
    )
    _write_pair(
        folder_dir / "images" / "p.png", folder_dir / "labels" / "p.png", 20, 20, [0, 1, 9], 5
    )
    _write_pair(folder_dir / "images" / "q.png", folder_dir / "labels" / "q.png", 10, 20, [0, 1], 6)
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path / "folder"))
    x, y = SegmentationPyDataset(cfg, "val", training=False, batch_size=1)[0]
    assert x.shape == (1, 20, 20, 3) and set(np.unique(y)) <= {0, 1, IGNORE_LABEL}
    with pytest.raises(Exception, match="mixes image sizes"):
        SegmentationPyDataset(cfg, "val", training=False, batch_size=2)[0]
    with pytest.raises(Exception, match="tf.data"):
        SegmentationPyDataset(dataclasses.replace(cfg, dataset="mapillary"), "val", False, 1)
    with pytest.raises(Exception, match="no label file"):
        (folder_dir / "images" / "r.png").write_bytes(
            (folder_dir / "images" / "q.png").read_bytes()
        )
        SegmentationPyDataset(cfg, "val", training=False, batch_size=1)
