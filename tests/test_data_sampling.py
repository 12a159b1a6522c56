"""Class-uniform sampling: centroids, the JSON cache, and crops centred on rare classes."""

import dataclasses
import json

import numpy as np
from PIL import Image

from hmsa_keras.config import DataConfig
from hmsa_keras.data import build_dataset, sampling


def test_label_centroids_per_tile():
    label = np.zeros((8, 8), np.uint8)
    label[5:7, 5:7] = 1
    label[0, 0] = 255
    found = sampling.label_centroids(label, 2, tile=4)
    assert (1, 6, 6) in found or (1, 5, 5) in found  # centre of the 2x2 square (rounded)
    assert sum(1 for c, _, _ in found if c == 0) == 4 and sum(1 for c, _, _ in found if c == 1) == 1


def _rare_class_folder(root, n=10, size=64):
    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (root / "train" / d).mkdir(parents=True)
    for i in range(n):
        lbl = np.zeros((size, size), np.uint8)
        if i < 2:  # a small class-1 square in two images only
            y, x = rng.integers(0, size - 4, 2)
            lbl[y : y + 4, x : x + 4] = 1
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / "train/images" / f"{i}.png"
        )
        Image.fromarray(lbl).save(root / "train/labels" / f"{i}.png")
    (root / "classes.json").write_text(json.dumps({"names": ["background", "rare"]}))


def _share_with_rare(config, n=96):
    ds = build_dataset(config, "train", training=True, batch_size=32)
    ys = np.concatenate([y.numpy() for _, y in ds.take(n // 32)])
    return float(np.mean([(y == 1).any() for y in ys]))


def test_class_uniform_crops_find_rare_class(tmp_path, monkeypatch):
    _rare_class_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    config = DataConfig(
        dataset="folder",
        data_dir=str(tmp_path / "data"),
        crop_size=(16, 16),
        scale_min=1.0,
        scale_max=1.0,
        class_uniform_fraction=1.0,
        class_uniform_tile=32,
        cache_dir=str(cache),
    )
    uniform = _share_with_rare(config)
    files = list(cache.glob("centroids_folder_train_t32_*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert cached["num_images"] == 10 and np.diff(cached["offsets"]).tolist()[1] == 2
    # Half the crops centre on the rare class (classes are drawn uniformly).
    assert 0.3 < uniform < 0.7, uniform
    config = dataclasses.replace(config, class_uniform_fraction=0.0)
    assert _share_with_rare(config) < 0.15
    # The cache is reused, not recomputed.
    monkeypatch.setattr(
        sampling, "compute_centroids", lambda *a, **k: (_ for _ in ()).throw(AssertionError)
    )
    config = dataclasses.replace(config, class_uniform_fraction=0.5)
    build_dataset(config, "train", training=True, batch_size=4)


def test_cache_directory_never_writes_into_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = DataConfig(dataset="folder", data_dir=str(tmp_path / "data"))
    assert sampling.cache_directory(config) == str(tmp_path / "home" / ".cache" / "hmsa_keras")
    config = dataclasses.replace(config, cache_dir=str(tmp_path / "mine"))
    assert sampling.cache_directory(config) == config.cache_dir and (tmp_path / "mine").is_dir()
