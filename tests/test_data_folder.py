"""Folder datasets (and pseudo-label sets) round-trip exactly."""

import dataclasses
import json

import numpy as np
from PIL import Image

from hmsa_keras.config import DataConfig
from hmsa_keras.data import build_dataset, get_dataset_info, iter_pairs
from hmsa_keras.data.normalization import denormalize


def write_folder(root, split, images, labels, names=None, ignore_label=None, ext=".png"):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    for i, (img, lbl) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(root / split / "images" / f"frame_{i:03d}{ext}")
        Image.fromarray(lbl).save(root / split / "labels" / f"frame_{i:03d}.png")
    if names is not None:
        spec = {"names": names, "colors": [[10 * i, 20, 30] for i in range(len(names))]}
        if ignore_label is not None:
            spec["ignore_label"] = ignore_label
        (root / "classes.json").write_text(json.dumps(spec))


def test_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 20, 3), dtype=np.uint8) for _ in range(3)]
    labels = [rng.choice(np.array([0, 1, 2, 3, 200], np.uint8), (12, 20)) for _ in range(3)]
    write_folder(tmp_path, "val", images, labels, ["bg", "road", "car", "tree"], ignore_label=200)
    config = DataConfig(dataset="folder", data_dir=str(tmp_path), validate="full")
    info = get_dataset_info(config)
    assert info.class_names == ["bg", "road", "car", "tree"] and info.num_classes == 4
    assert info.colors[2] == (20, 20, 30) and info.ignore_label == 255
    assert [p[0].rsplit("/", 1)[-1] for p in iter_pairs(config, "val")] == [
        f"frame_{i:03d}.png" for i in range(3)
    ]
    out = list(build_dataset(config, "val", training=False, batch_size=1))
    assert len(out) == 3
    for (x, y), img, lbl in zip(out, images, labels):
        np.testing.assert_array_equal(denormalize(x[0].numpy()), img)
        np.testing.assert_array_equal(y[0].numpy(), np.where(lbl == 200, 255, lbl))


def test_pseudo_labels_are_mixed_into_training(tmp_path):
    main, pseudo = tmp_path / "main", tmp_path / "pseudo"
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    write_folder(
        main,
        "train",
        imgs[:3],
        [np.full((16, 16), i % 3, np.uint8) for i in range(3)],
        ["a", "b", "c", "d"],
    )
    # Auto-labeller output: training ids, 255 = low confidence; class 3 only appears here.
    pl = [np.full((16, 16), 3, np.uint8) for _ in range(2)]
    pl[0][:4] = 255
    (pseudo / "images").mkdir(parents=True)
    (pseudo / "labels").mkdir()
    for i, (img, lbl) in enumerate(zip(imgs[3:], pl)):
        Image.fromarray(img).save(pseudo / "images" / f"u{i}.jpg", quality=95)
        Image.fromarray(lbl).save(pseudo / "labels" / f"u{i}.png")
    config = DataConfig(
        dataset="folder",
        data_dir=str(main),
        pseudo_label_dir=str(pseudo),
        crop_size=(16, 16),
        scale_min=1.0,
        scale_max=1.0,
        color_jitter=0.0,
    )
    labels = [
        y.numpy()[0]
        for _, y in build_dataset(config, "train", training=True, batch_size=1, repeat=False)
    ]
    assert len(labels) == 5  # one epoch = 3 labelled + 2 pseudo-labelled images
    assert sum(int((l == 3).any()) for l in labels) == 2
    assert sum(int((l == 255).sum() == 64) for l in labels) == 1
    # Without the flag, only the labelled set.
    config = dataclasses.replace(config, pseudo_label_dir=None)
    assert len(list(build_dataset(config, "train", training=True, batch_size=1, repeat=False))) == 3
