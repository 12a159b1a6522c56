"""Robust input: one image reader, one array contract, one minimum-size rule,
dataset versions and evaluation batching. Every input is built here with PIL/NumPy.

The cases of the issue: 16-bit grey images (1), EXIF orientation (2), float/16-bit arrays (3),
a Mapillary v2.0 class table (4), tiny images (5), hmsa-eval batches of mixed sizes (6).
(7, --help/--helpfull, is tests/test_config_schema.py; 8, empty SavedModel batches, and the
LiteRT runner are the export tests.)
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from hmsa_keras import conventions
from hmsa_keras.config import DataConfig
from hmsa_keras.data import io as dio
from hmsa_keras.data.io import DataError
from tests.conftest import REPO

ORIENTATION = 0x0112


def photo(h=24, w=36, seed=0):
    """A uint8 RGB picture with no symmetry (every transform of it differs)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_with_orientation(path, array, orientation, **kw):
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    img.save(path, exif=exif, **kw)


# What EXIF orientation o asks a viewer to do to the stored pixels (EXIF 2.3, tag 0x0112),
# written independently of PIL with NumPy.
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirror left-right
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # mirror top-bottom
    5: lambda a: np.swapaxes(a, 0, 1),  # transpose
    6: lambda a: np.rot90(a, k=-1),  # rotate 90 clockwise
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),  # transverse
    8: lambda a: np.rot90(a, k=1),  # rotate 90 counter-clockwise
}
STORED_FOR_UPRIGHT = {6: lambda a: np.rot90(a, k=1)}  # how a phone stores an upright picture (o=6)


def save_photo(h, w, seed=0):
    return lambda path: Image.fromarray(photo(h, w, seed)).save(path)


def save_label(h, w, value=0):
    return lambda path: Image.fromarray(np.full((h, w), value, np.uint8)).save(path)


def folder_dataset(root, pairs, names=("a", "b", "c")):
    """A folder dataset of (stem, image writer, label writer) in split 'train'."""
    for d in ("images", "labels"):
        (root / "train" / d).mkdir(parents=True, exist_ok=True)
    for stem, write_image, write_label in pairs:
        write_image(root / "train" / "images" / f"{stem}.png")
        write_label(root / "train" / "labels" / f"{stem}.png")
    (root / "classes.json").write_text(json.dumps({"names": list(names)}))
    return DataConfig(dataset="folder", data_dir=str(root), train_split="train", val_split="train")


def run_check(config):
    from hmsa_keras.cli.data import check

    out = io.StringIO()
    status = check(config, "train", workers=1, out=out)
    return status, out.getvalue()


# ------------------------------------------------------------------------ 1. 16-bit images
@pytest.mark.parametrize(
    "mode,dtype,ext", [("I;16", "<u2", "png"), ("I;16B", ">u2", "tif"), ("I", "<i4", "tif")]
)
def test_16bit_grey_image_is_reduced_to_8_bits_not_white(tmp_path, mode, dtype, ext):
    grey8 = photo(20, 30)[..., 0]
    low = np.arange(30)[None, :] * 37 % 256  # the low byte: anything
    grey16 = (grey8.astype(np.uint32) << 8) | low
    path = tmp_path / f"g.{ext}"
    Image.fromarray(grey16.astype(dtype)).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    image = dio.read_image(path)
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, np.repeat(grey8[..., None], 3, axis=-1))  # v >> 8
    # ... and the 8-bit copy of the picture reads the same (16-bit files used to come out white)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    np.testing.assert_array_equal(dio.read_image(tmp_path / "g8.png"), image)


def test_ambiguous_high_depth_images_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(DataError, match=r"i32.tif: 32-bit integer image .* 0\.\.70000.*8-bit RGB"):
        dio.read_image(tmp_path / "i32.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f.tif: 32-bit float image \(mode F\)"):
        dio.read_image(tmp_path / "f.tif")


def test_other_modes_as_before(tmp_path):
    rgb = photo(8, 10)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(dio.read_image(tmp_path / "rgba.png"), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    grey = np.repeat(rgb[..., :1], 3, -1)
    np.testing.assert_array_equal(dio.read_image(tmp_path / "l.png"), grey)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    expected = np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))
    np.testing.assert_array_equal(dio.read_image(tmp_path / "cmyk.tif"), expected)


def test_data_check_warns_about_16bit_images(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    config = folder_dataset(
        tmp_path,
        [
            (
                "deep",
                lambda p: Image.fromarray(np.full((16, 16), 3000, np.uint16)).save(p),
                lambda p: Image.fromarray(labels).save(p),
            ),
            ("plain", save_photo(16, 16), lambda p: Image.fromarray(labels).save(p)),
        ],
    )
    status, out = run_check(config)
    assert status == 0, out
    assert "1 warning(s)" in out
    assert "deep.png: 16-bit grey image (mode I;16, values 3000..3000)" in out
    assert "look dark" in out and "no problems found" in out


# ------------------------------------------------------------------------ 2. EXIF orientation
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_images_and_labels(tmp_path, orientation):
    stored = photo(12, 20, seed=orientation)
    save_with_orientation(tmp_path / "i.png", stored, orientation)
    np.testing.assert_array_equal(dio.read_image(tmp_path / "i.png"), DISPLAY[orientation](stored))
    ids = (stored[..., 0] % 3).astype(np.uint8)
    save_with_orientation(tmp_path / "l.png", ids, orientation)
    np.testing.assert_array_equal(dio.read_label_raw(tmp_path / "l.png"), DISPLAY[orientation](ids))
    assert dio.image_size(tmp_path / "i.png") == DISPLAY[orientation](stored).shape[:2]


def test_phone_jpeg_is_read_upright(tmp_path):
    upright = np.zeros((40, 64, 3), np.uint8)
    upright[:10] = (250, 20, 20)  # a red band at the top, as the photographer saw it
    save_with_orientation(tmp_path / "phone.jpg", STORED_FOR_UPRIGHT[6](upright), 6, quality=95)
    with Image.open(tmp_path / "phone.jpg") as img:
        assert img.size == (40, 64)  # stored sideways
    image = dio.read_image(tmp_path / "phone.jpg")
    assert image.shape == (40, 64, 3)
    assert np.abs(image.astype(int) - upright).mean() < 3  # JPEG loss only
    assert dio.image_size(tmp_path / "phone.jpg") == (40, 64)  # from the header alone


def test_label_drawn_on_the_upright_photo_matches_it(tmp_path):
    """Square photo stored sideways: the label drawn on what viewers show lines up with the
    image as read (ignoring EXIF, the two were 90 degrees apart and nothing noticed)."""
    upright = photo(32, 32, seed=5)
    label = (upright[..., 0] > 127).astype(np.uint8)
    config = folder_dataset(
        tmp_path,
        [
            (
                "sq",
                lambda p: save_with_orientation(p, STORED_FOR_UPRIGHT[6](upright), 6),
                lambda p: Image.fromarray(label).save(p),
            )
        ],
    )
    from hmsa_keras.data import get_dataset_info, iter_pairs, load_image_label

    image, lbl = load_image_label(*iter_pairs(config, "train")[0], get_dataset_info(config))
    np.testing.assert_array_equal(image, upright)
    np.testing.assert_array_equal(lbl, (image[..., 0] > 127).astype(np.uint8))
    status, out = run_check(config)
    assert status == 0, out
    assert "sq.png: image has EXIF orientation 6 (rotated 90 degrees clockwise)" in out


def test_size_mismatch_names_the_displayed_size_and_the_rotation(tmp_path):
    stored = photo(30, 50)  # shown as 30 wide x 50 high
    config = folder_dataset(
        tmp_path, [("p", lambda p: save_with_orientation(p, stored, 6), save_label(30, 50))]
    )  # a label of the stored pixels
    from hmsa_keras.data import get_dataset_info, iter_pairs, load_image_label

    with pytest.raises(DataError) as err:
        load_image_label(*iter_pairs(config, "train")[0], get_dataset_info(config))
    text = str(err.value)
    assert "label size 50x30 (WxH) differs from its image" in text
    assert (
        "(30x50 as displayed: its EXIF orientation 6 (rotated 90 degrees clockwise) was "
        "applied; stored as 50x30)"
    ) in text
    assert "made without the EXIF rotation" in text
    for level in ("headers", "full"):  # the build-time check says the same
        from hmsa_keras.data import build_dataset

        with pytest.raises(DataError, match="30x50 as displayed"):
            build_dataset(
                dataclass_replace(config, validate=level), "train", training=False, batch_size=1
            )
    status, out = run_check(config)
    assert status == 1 and "30x50 as displayed" in out


def dataclass_replace(config, **kw):
    import dataclasses

    return dataclasses.replace(config, **kw)


# ------------------------------------------------------------------------ 3. the array contract
@pytest.mark.parametrize(
    "make,fragments",
    [
        (
            lambda: photo().astype(np.float32) / 255.0,
            ["got float32 with values in [", "(x * 255).round()"],
        ),
        (lambda: photo().astype(np.uint16) * 257, ["got uint16", "(x >> 8).astype(np.uint8)"]),
        (lambda: photo()[None], ["got a batch of shape (1, 24, 36, 3)", "image[0]"]),
        (lambda: photo()[..., 0], ["greyscale array of shape (24, 36)"]),
        (lambda: np.concatenate([photo(), photo()[..., :1]], -1), ["4 channels", "x[..., :3]"]),
        (lambda: "street.png", ["got a path 'street.png'", "read_image(path)"]),
        (lambda: np.zeros((0, 5, 3), np.uint8), ["empty image"]),
    ],
)
def test_segment_image_refuses_other_arrays_with_what_to_pass(make, fragments):
    import hmsa_keras

    with pytest.raises(ValueError) as err:  # refused before the model is touched
        hmsa_keras.segment_image(None, make(), scales=(1.0,), name="my_image")
    text = str(err.value)
    assert text.startswith("my_image: ") and "\n" not in text
    for fragment in fragments:
        assert fragment in text, text


def test_uint8_rgb_is_accepted_and_float_results_differ(tiny_model):
    """The refused float input really would be wrong: the model's answer on x/255 is not its
    answer on x (which is what silently happened before)."""
    import hmsa_keras
    from hmsa_keras.inference import normalize

    image = photo(32, 48)
    out = hmsa_keras.segment_image(tiny_model, image, scales=(1.0,))
    assert out["classes"].shape == (32, 48)
    floats = normalize(image.astype(np.float32) / 255.0)[None]
    as_if_float = tiny_model.segment(floats, scales=(1.0,))
    assert not np.allclose(np.asarray(as_if_float["logits"])[0], out["logits"], atol=1e-3)


# ------------------------------------------------------------------------ 4. dataset versions
def mapillary(root, version_labels, layout="v1.2", n_images=1, label_value=0):
    """A Mapillary folder: class file(s) and one training pair."""

    def table(n):
        labels = [
            {"name": f"class--{i}", "readable": f"Class {i}", "color": [i % 256, 0, 0]}
            for i in range(n - 1)
        ]
        last = {"name": "void--unlabeled", "readable": "Unlabeled", "color": [0, 0, 0]}
        return {"labels": labels + [last]}

    root.mkdir(parents=True, exist_ok=True)
    if layout == "v1.2":
        (root / "config.json").write_text(json.dumps(table(version_labels)))
        lbl_dir = root / "training" / "labels"
    else:  # the v2.0 release: both tables, versioned label folders
        (root / "config_v1.2.json").write_text(json.dumps(table(66)))
        (root / "config_v2.0.json").write_text(json.dumps(table(124)))
        for v in ("v1.2", "v2.0"):
            (root / "training" / v / "labels").mkdir(parents=True, exist_ok=True)
        lbl_dir = root / "training" / "v2.0" / "labels"
    (root / "training" / "images").mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.fromarray(photo(16, 16)).save(root / "training" / "images" / f"k{i}.jpg")
        Image.fromarray(np.full((16, 16), label_value, np.uint8)).save(lbl_dir / f"k{i}.png")
        if layout != "v1.2":
            save_label(16, 16)(root / "training" / "v1.2" / "labels" / f"k{i}.png")
    return DataConfig(
        dataset="mapillary", data_dir=str(root), train_split="train", val_split="train"
    )


def test_mapillary_v2_table_is_not_taken_as_v1_2(tmp_path):
    from hmsa_keras.data import get_dataset_info

    config = mapillary(tmp_path, 124)
    with pytest.raises(DataError) as err:
        get_dataset_info(config)
    text = str(err.value)
    assert str(tmp_path / "config.json") in text
    assert "124 labels listed" in text and "v1.2 has 66" in text
    assert "--mapillary_version=2.0" in text
    status, out = run_check(config)  # hmsa-data check reports it (it said "no problems found")
    assert status == 1 and "124 labels listed" in out


def test_mapillary_table_of_another_length_names_both_counts(tmp_path):
    from hmsa_keras.data import get_dataset_info

    with pytest.raises(
        DataError,
        match=r"config.json: 70 labels listed, but Mapillary Vistas v1.2 "
        r"has 66",
    ):
        get_dataset_info(mapillary(tmp_path, 70))
    with pytest.raises(
        DataError,
        match=r"config.json: 66 labels listed, but Mapillary Vistas v2.0 "
        r"has 124 .*v1.2 class table: pass "
        r"--mapillary_version=1.2",
    ):
        get_dataset_info(dataclass_replace(mapillary(tmp_path, 66), mapillary_version="2.0"))


def test_mapillary_both_versions_supported(tmp_path):
    from hmsa_keras.data import get_dataset_info, iter_pairs, load_image_label

    v12 = get_dataset_info(mapillary(tmp_path / "a", 66))
    assert v12.num_classes == 65 and v12.lut[65] == 255 and v12.lut[66] == -1
    config = dataclass_replace(
        mapillary(tmp_path / "b", None, layout="release2", label_value=123), mapillary_version="2.0"
    )
    info = get_dataset_info(config)
    assert info.num_classes == 123 and info.class_names[122] == "Class 122" and info.lut[123] == 255
    pairs = iter_pairs(config, "train")
    assert pairs[0][1].endswith("training/v2.0/labels/k0.png")
    assert (load_image_label(*pairs[0], info)[1] == 255).all()  # 123 = unlabeled -> ignore
    v12_of_release = dataclass_replace(config, mapillary_version="1.2")
    assert get_dataset_info(v12_of_release).num_classes == 65
    assert iter_pairs(v12_of_release, "train")[0][1].endswith("training/v1.2/labels/k0.png")


# ------------------------------------------------------------------------ 5. the minimum size
def test_min_size_rule_matches_the_models_resize():
    """min_input_side is exactly where the model's own float32 resize reaches MIN_SIDE."""
    from hmsa_keras.models.fusion import scaled_size

    for chain in [(1.0,), (0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0), (0.7,), (0.3, 1.0), (0.75, 1.25)]:
        n = conventions.min_input_side(chain)
        for side, ok in ((n, True), (n - 1, False)):
            batch = np.zeros((1, side, side + 5, 3))
            sizes = [tuple(int(v) for v in np.asarray(scaled_size(batch, s))) for s in chain]
            smallest = min(min(hw) for hw in sizes)
            assert (smallest >= conventions.MIN_SIDE) == ok, (chain, side, sizes)
            problem = conventions.min_size_problem(side, side + 5, chain)
            assert (problem is None) == ok, (chain, side)


def test_segment_image_refuses_a_tiny_image_in_one_line():
    import hmsa_keras

    with pytest.raises(ValueError) as err:
        hmsa_keras.segment_image(None, photo(31, 100), scales=(0.5, 1.0, 2.0), name="tiny.png")
    assert str(err.value) == (
        "tiny.png: image of 31x100 (HxW) is 15x50 at scale 0.5: every side must be at least 16 "
        "pixels at every scale of the chain, i.e. at least 32 pixels at scale 0.5; use a larger "
        "image or drop scale 0.5"
    )


def test_eval_refuses_a_tiny_image_up_front(tmp_path):
    from hmsa_keras.data.pipeline import check_eval_inputs

    config = folder_dataset(
        tmp_path,
        [
            ("big", save_photo(64, 64), save_label(64, 64)),
            ("small", save_photo(20, 64), save_label(20, 64)),
        ],
    )
    check_eval_inputs(config, "train", 1, (1.0,))  # 20 px is enough at scale 1
    with pytest.raises(DataError) as err:
        check_eval_inputs(config, "train", 1, (0.5, 1.0))
    assert "small.png: image of 20x64 (HxW) is 10x32 at scale 0.5" in str(err.value)
    assert "\n" not in str(err.value)
    long_edge = dataclass_replace(config, eval_long_edge=32)  # the size after the eval resize
    with pytest.raises(
        DataError,
        match=r"small.png: image of 10x32 \(HxW\) is 5x16 at scale 0.5.*"
        r"after the evaluation resize",
    ):
        check_eval_inputs(long_edge, "train", 1, (0.5, 1.0))


# ------------------------------------------------------------------------ 6. batching
def test_eval_batches_of_mixed_sizes_stop_up_front(tmp_path):
    from hmsa_keras.data.pipeline import check_eval_inputs, eval_image_sizes

    sizes = (("a", 32, 48), ("b", 32, 48), ("c", 48, 32))
    config = folder_dataset(
        tmp_path, [(s, save_photo(h, w), save_label(h, w)) for s, h, w in sizes]
    )
    check_eval_inputs(config, "train", 1, (1.0,))
    check_eval_inputs(config, "train", 2, (1.0,), max_images=2)  # a and b share a size
    with pytest.raises(DataError) as err:
        check_eval_inputs(config, "train", 2, (1.0,))
    text = str(err.value)
    assert "\n" not in text and "batch size 2 needs images of one size" in text
    assert "a.png is 32x48" in text and "c.png is 48x32" in text and "--batch_size=1" in text
    # the evaluation resize is taken into account (NumPy twin of augment.resize_long_edge)
    sizes = eval_image_sizes(dataclass_replace(config, eval_long_edge=24), "train")
    assert [hw for _, hw in sizes] == [(16, 24), (16, 24), (24, 16)]


def test_eval_resize_twin_matches_the_pipeline():
    import tensorflow as tf

    from hmsa_keras.data.augment import resize_long_edge
    from hmsa_keras.data.pipeline import eval_resized_hw

    cases = [
        ((375, 500), 2177, True),
        ((333, 1001), 512, False),
        ((100, 37), 64, False),
        ((61, 91), 2177, True),
        ((480, 640), 480, False),
    ]
    for (h, w), edge, up in cases:
        image, _ = resize_long_edge(
            tf.zeros((h, w, 3), tf.uint8), tf.zeros((h, w), tf.uint8), edge, upscale=up
        )
        assert tuple(image.shape[:2]) == eval_resized_hw(h, w, edge, up), (h, w, edge, up)


# ------------------------------------------------------------------------ hmsa-predict, end to end
@pytest.mark.slow
def test_predict_reads_16bit_and_rotated_files_like_their_plain_copies(tmp_path, tiny_model):
    """hmsa-predict through the one reader: a 16-bit grey PNG segments like its 8-bit copy,
    a sideways-stored phone photo like the upright picture; a tiny image stops with one line."""
    from absl import app

    from hmsa_keras.cli import predict
    from tests.eval_helpers import write_run_dir

    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path / "none"))
    run = write_run_dir(tmp_path / "run", tiny_model, cfg, eval_scales=(0.5, 1.0))
    inputs = tmp_path / "in"
    inputs.mkdir()
    grey8 = photo(48, 64)[..., 0]
    Image.fromarray(grey8).save(inputs / "grey8.png")
    Image.fromarray((grey8.astype(np.uint16) << 8) | 0x5A).save(inputs / "grey16.png")
    upright = photo(40, 56, seed=3)
    Image.fromarray(upright).save(inputs / "upright.png")
    save_with_orientation(inputs / "sideways.png", STORED_FOR_UPRIGHT[6](upright), 6)
    out = tmp_path / "out"
    status = predict.TOOL.invoke(
        predict.main,
        [
            f"--model_dir={run}",
            f"--input={inputs}",
            f"--output_dir={out}",
            "--save_raw",
            "--novisualize",
        ],
    )
    assert status == 0

    def label(stem):
        return np.asarray(Image.open(out / f"{stem}_label.png"))

    np.testing.assert_array_equal(label("grey16"), label("grey8"))
    np.testing.assert_array_equal(label("sideways"), label("upright"))
    assert label("sideways").shape == (40, 56)

    Image.fromarray(photo(20, 64)).save(inputs / "tiny.png")
    with pytest.raises(app.UsageError) as err:
        predict.TOOL.invoke(
            predict.main,
            [f"--model_dir={run}", f"--input={inputs / 'tiny.png'}", f"--output_dir={out}"],
        )
    expected = f"{inputs / 'tiny.png'}: image of 20x64 (HxW) is 10x32 at scale 0.5"
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_eval_names_the_flag_for_files_that_are_not_models(tmp_path):
    """A PNG given as --tflite or --model_dir: one usage line naming the flag (not a
    traceback from the FlatBuffers reader, nor a complaint about --dataset)."""
    from absl import app
    from PIL import Image

    from hmsa_keras.cli import eval as cli

    png = tmp_path / "street.png"
    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(app.UsageError, match=r"--tflite: .*street\.png.* is not a TFLite model"):
        cli.TOOL.invoke(cli.main, [f"--tflite={png}", "--dataset=synthetic"])
    with pytest.raises(app.UsageError, match=r"--model_dir: .*street\.png.* is not a model"):
        cli.TOOL.invoke(cli.main, [f"--model_dir={png}"])


def test_litert_runner_names_a_missing_or_foreign_model_file(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    png = tmp_path / "street.png"
    Image.new("RGB", (8, 8)).save(png)
    runner = REPO / "export" / "litert_runner.py"
    for model, words in ((tmp_path / "none.tflite", "no such file"), (png, "not a TFLite model")):
        proc = subprocess.run(
            [sys.executable, str(runner), str(model), str(png), "--out", str(tmp_path / "o.png")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
