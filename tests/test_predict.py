"""hmsa-predict / hmsa-autolabel, run in-process through their absl flags."""

import json
import os

import numpy as np
import pytest
from absl import app
from PIL import Image

from tests.eval_helpers import write_folder_dataset, write_run_dir

K = 4


def _run(module, *args, autolabel=False):
    tool, main = (
        (module.AUTOLABEL_TOOL, module.autolabel_main) if autolabel else (module.TOOL, module.main)
    )
    return tool.invoke(main, args)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    from hmsa_keras.config import DataConfig

    root = tmp_path_factory.mktemp("predict")
    write_folder_dataset(root / "data", sizes=((64, 64), (64, 96)))
    cfg = DataConfig(dataset="folder", data_dir=str(root / "data"))
    return write_run_dir(root / "run", tiny_model, cfg, eval_scales=(0.5, 1.0)), root


def test_predict_writes_files(run_dir, tiny_model):
    from hmsa_keras.cli import predict

    run, root = run_dir
    images = root / "data" / "val" / "images"
    out = root / "out"
    _run(
        predict,
        f"--model_dir={run}",
        f"--input={images}",
        f"--output_dir={out}",
        "--save_raw",
        "--save_probs",
        "--save_attention",
    )
    for stem, (h, w) in (("img0", (64, 64)), ("img1", (64, 96))):
        for suffix in ("_color.png", "_overlay.png", "_attention_0.5.png", "_attention_1.png"):
            with Image.open(out / f"{stem}{suffix}") as im:
                assert im.size == (w, h) and im.mode == "RGB"
        raw = np.asarray(Image.open(out / f"{stem}_label.png"))
        probs = np.load(out / f"{stem}_probs.npy")
        assert raw.shape == (h, w) and probs.shape == (h, w, K) and probs.dtype == np.float16
        np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=1e-2)
        # the raw map is the model's argmax with the run's eval_scales (0.5, 1.0)
        import hmsa_keras

        image = np.asarray(Image.open(images / f"{stem}.png").convert("RGB"))
        want = hmsa_keras.segment_image(tiny_model, image, scales=(0.5, 1.0))["classes"]
        assert (raw == want).mean() > 0.999
        # the colour map uses the dataset's classes.json palette (generated colours here)
        from hmsa_keras.data.folder import default_colors
        from hmsa_keras.visualize import colorize

        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"{stem}_color.png")), colorize(raw, default_colors(K))
        )


def test_predict_tiled_and_glob(run_dir):
    from hmsa_keras.cli import predict

    run, root = run_dir
    out = root / "out_tiled"
    _run(
        predict,
        f"--model_dir={run}",
        f"--input={root / 'data' / 'val' / 'images' / 'img1.*'}",
        f"--output_dir={out}",
        "--scales=1.0",
        "--tile_size=64x64",
        "--tile_overlap=32",
        "--save_raw",
    )
    assert sorted(os.listdir(out)) == ["img1_color.png", "img1_label.png", "img1_overlay.png"]
    assert np.asarray(Image.open(out / "img1_label.png")).shape == (64, 96)


def test_autolabel_marks_low_confidence_and_loads_as_folder_dataset(run_dir, tiny_model):
    import tensorflow as tf

    import hmsa_keras
    from hmsa_keras.cli import predict
    from hmsa_keras.config import DataConfig
    from hmsa_keras.data import build_dataset, get_dataset_info

    run, root = run_dir
    images = root / "data" / "val" / "images"
    probs = {}
    for stem in ("img0", "img1"):
        image = np.asarray(Image.open(images / f"{stem}.png").convert("RGB"))
        probs[stem] = hmsa_keras.segment_image(tiny_model, image, scales=(1.0,))["probabilities"]
    top = np.concatenate([p.max(-1).ravel() for p in probs.values()])
    threshold = float(np.median(top))  # about half the pixels fall below it
    pseudo = root / "pseudo"
    _run(
        predict,
        f"--model_dir={run}",
        f"--input={images}",
        f"--pseudo_label_dir={pseudo}",
        f"--confidence={threshold}",
        "--scales=1.0",
        "--novisualize",
    )
    assert json.loads((pseudo / "classes.json").read_text())["names"] == [f"c{i}" for i in range(K)]
    for stem, p in probs.items():
        label = np.asarray(Image.open(pseudo / "train" / "labels" / f"{stem}.png"))
        certain = np.abs(p.max(-1) - threshold) > 1e-4  # leave float ties at the threshold out
        want = np.where(p.max(-1) < threshold, 255, p.argmax(-1))
        np.testing.assert_array_equal(label[certain], want[certain])
        assert 0.2 < (label == 255).mean() < 0.8
        assert (pseudo / "train" / "images" / f"{stem}.png").is_file()
    stats = json.loads((pseudo / "autolabel.json").read_text())
    assert len(stats["images"]) == 2 and stats["confidence"] == pytest.approx(threshold)
    # ... and it is a folder dataset the pipeline reads (the trainer mixes it in via
    # pseudo_label_dir)
    cfg = DataConfig(dataset="folder", data_dir=str(pseudo))
    assert get_dataset_info(cfg).num_classes == K
    labels = [y.numpy()[0] for _, y in build_dataset(cfg, "train", training=False, batch_size=1)]
    np.testing.assert_array_equal(
        labels[0], np.asarray(Image.open(pseudo / "train" / "labels" / "img0.png"))
    )
    assert tf.reduce_any(labels[1] == 255)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--input={images}", "--output_dir={out}"), "--model_dir: is required"),
        (("--model_dir={run}", "--output_dir={out}"), "--input: is required"),
        (
            ("--model_dir={run}", "--input={out}/*.png", "--output_dir={out}"),
            "--input: no images found",
        ),
        (("--model_dir={run}", "--input={images}"), "--output_dir: is required"),
        (
            ("--model_dir={run}", "--input={images}", "--output_dir={out}", "--scales=1,,x"),
            "--scales: bad scale",
        ),
        (
            ("--model_dir={run}", "--input={images}", "--output_dir={out}", "--tile_size=64xq"),
            "--tile_size: expected HxW",
        ),
        (
            (
                "--model_dir={run}",
                "--input={images}",
                "--output_dir={out}",
                "--tile_size=64",
                "--tile_overlap=64",
            ),
            "--tile_overlap: must be smaller",
        ),
    ],
)
def test_predict_cli_bad_flags(run_dir, args, message):
    from hmsa_keras.cli import predict

    run, root = run_dir
    fmt = dict(run=run, images=root / "data" / "val" / "images", out=root / "nothing")
    with pytest.raises(app.UsageError, match=message):
        _run(predict, *[a.format(**fmt) for a in args])
