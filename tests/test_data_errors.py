"""Bad input gives one clear DataError naming the file; `hmsa-data check` lists every problem."""

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hmsa_keras.cli.data import check
from hmsa_keras.config import DataConfig
from hmsa_keras.data import DataError, build_dataset, iter_pairs

REPO = Path(__file__).resolve().parents[1]


def make(root, n=3, size=(8, 8)):
    """A valid 3-class folder dataset with ``n`` pairs in split 'train'."""
    for d in ("images", "labels"):
        (root / "train" / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full(size + (3,), 40 * i, np.uint8)).save(
            root / "train/images" / f"f{i}.png"
        )
        Image.fromarray(np.full(size, i % 3, np.uint8)).save(root / "train/labels" / f"f{i}.png")
    (root / "classes.json").write_text(json.dumps({"names": ["a", "b", "c"]}))
    return DataConfig(dataset="folder", data_dir=str(root), crop_size=(8, 8))


def build(config, **kw):
    return build_dataset(config, "train", training=False, batch_size=1, **kw)


def expect_error(config, *fragments):
    with pytest.raises(DataError) as err:
        build(config)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_missing_pair(tmp_path):
    config = make(tmp_path)
    os.remove(tmp_path / "train/labels/f1.png")
    expect_error(config, "f1.png", "no label file")
    with pytest.raises(DataError, match="f1.png"):
        iter_pairs(config, "train")


def test_label_without_image(tmp_path):
    config = make(tmp_path)
    os.remove(tmp_path / "train/images/f2.png")
    expect_error(config, "labels/f2.png", "has no image")


def test_corrupt_png(tmp_path):
    config = make(tmp_path)
    (tmp_path / "train/labels/f0.png").write_bytes(b"definitely not a png")
    expect_error(config, "labels/f0.png", "not a readable image")


def test_truncated_png_fails_in_graph_naming_the_file(tmp_path):
    config = make(tmp_path, size=(64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "train/images/f1.png"
    )
    data = (tmp_path / "train/images/f1.png").read_bytes()
    (tmp_path / "train/images/f1.png").write_bytes(data[: len(data) // 2])  # header intact
    ds = build(config)  # header check passes
    with pytest.raises(tf.errors.OpError, match=r"images/f1\.png: image file is corrupt"):
        list(ds)
    config = dataclasses.replace(config, validate="full")
    expect_error(config, "images/f1.png", "corrupt")


def test_size_mismatch(tmp_path):
    config = make(tmp_path)
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "train/labels/f2.png")
    expect_error(config, "labels/f2.png", "differs from its image")


def test_label_ids_outside_table(tmp_path):
    config = make(tmp_path)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "train/labels/f1.png")
    with pytest.raises(
        tf.errors.OpError, match=r"labels/f1\.png: label ids \[7\] are outside the class table"
    ):
        list(build(config))  # default validation reads headers only: caught while loading
    config = dataclasses.replace(config, validate="full")
    expect_error(config, "labels/f1.png", "[7] are outside the class table")


def test_empty_split_and_wrong_paths(tmp_path):
    config = make(tmp_path, n=0)
    expect_error(config, "split 'train'", "empty")
    expect_error(
        DataConfig(dataset="folder", data_dir=str(tmp_path / "nope")), "nope", "does not exist"
    )
    with pytest.raises(DataError, match="val/images: image directory does not exist"):
        build_dataset(config, "val", training=False, batch_size=1)
    os.remove(tmp_path / "classes.json")
    expect_error(config, "classes.json", "does not exist")
    expect_error(DataConfig(dataset="kitti", data_dir=str(tmp_path)), "unknown dataset 'kitti'")


def broken_dataset(root):
    config = make(root, n=5)
    os.remove(root / "train/labels/f1.png")  # missing pair
    (root / "train/images/f2.png").write_bytes(b"\x89PNG garbage")  # corrupt
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(root / "train/labels/f3.png")  # bad ids
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(root / "train/labels/f4.png")  # size mismatch
    return config


def test_check_reports_every_problem(tmp_path):
    config = broken_dataset(tmp_path)
    out = io.StringIO()
    assert check(config, "train", out=out) == 1
    text = out.getvalue()
    assert "4 problem(s)" in text
    for fragment in (
        "images/f1.png: no label file",
        "images/f2.png",
        "labels/f3.png: label ids [9]",
        "labels/f4.png: label size",
    ):
        assert fragment in text, text
    assert "4 image(s) scanned" in text  # f0, f2..f4 (f1 has no label)
    good = io.StringIO()
    assert check(make(tmp_path / "good"), "train", out=good) == 0
    assert "no problems found" in good.getvalue() and "33.333%" in good.getvalue()


@pytest.mark.slow
def test_check_command_line_exit_status(tmp_path):
    broken_dataset(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hmsa_keras.cli.data",
            "check",
            "--dataset=folder",
            f"--data_dir={tmp_path}",
            "--split=train",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "labels/f3.png" in proc.stdout and "images/f1.png" in proc.stdout
