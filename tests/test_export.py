"""Exporter tests: SavedModel signatures (in a TensorFlow-only process), input checks,
TFLite float32 parity and dynamic sizes (in a LiteRT-only process), builtin ops, int8.

One tiny model, one SavedModel and two TFLite conversions for the whole module: they
are the slow part.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocesses / training / export / benchmarks

tf = pytest.importorskip("tensorflow")

import hmsa_keras  # noqa: E402
from hmsa_keras.data.normalization import normalize  # noqa: E402
from hmsa_keras.export import saved_model as S  # noqa: E402
from hmsa_keras.export import tflite  # noqa: E402
from tests.helpers.common import TINY as TINY_MODEL  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = (0.5, 1.0)
TINY = dict(num_classes=4, **TINY_MODEL)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
ENV.update(TF_CPP_MIN_LOG_LEVEL="2")


def _images(shape, seed):
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return hmsa_keras.build_model(**TINY)


@pytest.fixture(scope="module")
def module(model):
    return S.HMSAExportModule(model, SCALES, flip=True)


@pytest.fixture(scope="module")
def saved_model_dir(module, tmp_path_factory):
    return S.export_saved_model(
        None, str(tmp_path_factory.mktemp("sm") / "saved_model"), module=module
    )


@pytest.fixture(scope="module")
def float32_tflite(module, tmp_path_factory):
    path = tmp_path_factory.mktemp("tfl") / "float32.tflite"
    path.write_bytes(tflite.convert(module, "float32"))
    return str(path)


SERVING_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, images_file, out_file = sys.argv[1:]
    images = np.load(images_file)
    out = {}
    # 1. What `saved_model_cli run` does: a TF1 session over the MetaGraph, feeding the
    #    signature's input tensor by name (no shape check on the C++ side, like TF Serving).
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        for name in ("serving_default", "with_details"):
            sig = meta.signature_def[name]
            fetch = {k: v.name for k, v in sig.outputs.items()}
            res = sess.run(fetch, {sig.inputs["images"].name: images})
            for k, v in res.items():
                out[f"{name}/{k}"] = v
        sig = meta.signature_def["serving_default"]
        errors = {}
        for what, bad in (("channels", images[..., :2]), ("rank", images[0])):
            try:
                sess.run(sig.outputs["classes"].name, {sig.inputs["images"].name: bad})
                errors[what] = None
            except Exception as exc:
                errors[what] = str(exc)[:3000]
    # 2. TF2: tf.saved_model.load and the dynamic-chain signature.
    loaded = tf.saved_model.load(path)
    res = loaded.signatures["segment_with_scales"](images=tf.constant(images),
                                                    scales=tf.constant([1.0, 0.5, 2.0]))
    for k, v in res.items():
        out[f"segment_with_scales/{k}"] = v.numpy()
    try:
        loaded.signatures["serving_default"](images=tf.constant(images.astype(np.float32)))
        errors["dtype"] = None
    except Exception as exc:
        errors["dtype"] = str(exc)[:3000]
    assert "hmsa_keras" not in sys.modules, "must run on TensorFlow alone"
    np.savez(out_file, **out)
    print(json.dumps({"errors": errors, \
"signatures": sorted(k for k in meta.signature_def if not k.startswith("__"))}))
""")


@pytest.fixture(scope="module")
def serving(saved_model_dir, tmp_path_factory):
    """Runs the SavedModel in a fresh process importing only TensorFlow."""
    tmp = tmp_path_factory.mktemp("serving")
    images = _images((2, 64, 48, 3), 0)
    np.save(tmp / "images.npy", images)
    script = tmp / "serve.py"
    script.write_text(SERVING_SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            saved_model_dir,
            str(tmp / "images.npy"),
            str(tmp / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=str(tmp),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return images, dict(np.load(tmp / "out.npz")), info


def test_saved_model_matches_keras_in_tensorflow_only_process(model, serving):
    images, out, info = serving
    assert info["signatures"] == [
        "segment_with_scales",
        "serving_default",
        "serving_encoded",
        "serving_encoded_png",
        "with_details",
    ]
    ref = model.segment(normalize(images), scales=SCALES, flip=True, return_details=True)
    classes = ref["classes"].numpy()
    probs = tf.nn.softmax(ref["logits"]).numpy()
    np.testing.assert_array_equal(out["serving_default/classes"], classes)
    np.testing.assert_array_equal(out["with_details/classes"], classes)
    assert out["serving_default/classes"].dtype == np.int32
    np.testing.assert_allclose(out["with_details/probabilities"], probs, atol=1e-5)
    np.testing.assert_allclose(out["with_details/scales"], SCALES)
    attention = np.concatenate([ref["attention"][s].numpy() for s in SCALES], axis=-1)
    np.testing.assert_allclose(out["with_details/attention"], attention, atol=1e-5)


def test_segment_with_scales_takes_the_chain_at_request_time(model, serving):
    images, out, _ = serving
    ref = model.segment(normalize(images), scales=(0.5, 1.0, 2.0), flip=True)
    np.testing.assert_array_equal(out["segment_with_scales/classes"], ref["classes"].numpy())
    np.testing.assert_allclose(
        out["segment_with_scales/probabilities"], tf.nn.softmax(ref["logits"]).numpy(), atol=1e-5
    )


def test_bad_inputs_fail_with_clear_errors(serving):
    """The declared [None, None, None, 3] uint8 shape is checked by the client-side loaders;
    TF Serving does not check fed shapes, so the graph's own assert must explain too."""
    errors = serving[2]["errors"]
    for what in ("channels", "rank"):
        assert (
            errors[what]
            and "serving_default_images" in errors[what]
            and "(None, None, None, 3)" in errors[what]
        ), errors[what]
    assert errors["dtype"] and "uint8" in errors["dtype"], errors["dtype"]
    check = tf.function(S.check_images, input_signature=[tf.TensorSpec(None, tf.uint8)])
    for bad in (
        np.zeros((1, 8, 8, 2), np.uint8),
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((1, 0, 8, 3), np.uint8),
    ):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"`images` must be a 4-D uint8 batch"
        ):
            check(bad)
    assert check(np.zeros((0, 0, 0, 3), np.uint8)).shape == (0, 0, 0, 3)  # an empty batch is fine


def test_float32_tflite_dynamic_sizes_with_litert_alone(model, float32_tflite, tmp_path):
    """export/litert_runner.py, run as a script in a process without TensorFlow or hmsa_keras,
    segments two images of different sizes with one dynamic-size model; the class maps
    match the Keras model's."""
    from PIL import Image

    images = [_images((64, 64, 3), 1), _images((40, 72, 3), 2)]
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(img).save(paths[-1])
    runner = os.path.join(ROOT, "export", "litert_runner.py")
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["litert_runner.py", {float32_tflite!r}, *{paths!r}, \
"--out", {str(tmp_path / "out")!r}, "--raw"]
        try:
            runpy.run_path({runner!r}, run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        # hmsa_keras.conventions / image_io may come from the package; nothing heavier may
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "not standalone"
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, img in enumerate(images):
        got = np.asarray(Image.open(tmp_path / "out" / f"img{i}.png"))
        ref = model.segment(normalize(img[None]), scales=SCALES, flip=True)["classes"][0].numpy()
        assert got.shape == img.shape[:2]
        assert np.mean(got == ref) >= 0.999


def test_float32_tflite_probabilities_and_builtin_ops(model, float32_tflite):
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    with open(float32_tflite, "rb") as f:
        content = f.read()
    ops = tflite.operator_codes(content)
    assert tflite.non_builtin_ops(content) == [], ops
    assert "RESIZE_BILINEAR" in ops and "ARG_MAX" in ops
    assert not {"VAR_HANDLE", "READ_VARIABLE"} & set(ops), "weights must be frozen into constants"
    segmenter = LiteRTSegmenter(float32_tflite)
    assert segmenter.dynamic
    img = _images((48, 56, 3), 3)
    out = segmenter.segment(img, probabilities=True)
    ref = model.segment(normalize(img[None]), scales=SCALES, flip=True)
    np.testing.assert_allclose(
        out["probabilities"], tf.nn.softmax(ref["logits"][0]).numpy(), atol=1e-4
    )


def test_full_int8_converts_builtin_only_and_runs(module):
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    calibration = [_images((64, 64, 3), 10 + i) for i in range(3)]
    content = tflite.convert(module, "full_int8", representative_images=calibration)
    assert tflite.non_builtin_ops(content) == []
    ops = tflite.operator_codes(content)
    assert "QUANTIZE" in ops and "CONV_2D" in ops
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(content)
        f.flush()
        segmenter = LiteRTSegmenter(f.name)
        types = {d["dtype"] for d in segmenter.interpreter.get_tensor_details()}
        assert np.int8 in types
        out = segmenter.segment(_images((32, 40, 3), 4))
    assert out["classes"].shape == (32, 40)
    assert out["classes"].min() >= 0 and out["classes"].max() < TINY["num_classes"]


def test_full_int8_needs_calibration_images(module):
    with pytest.raises(ValueError, match="calibration"):
        tflite.convert(module, "full_int8")
    with pytest.raises(ValueError, match="Unknown TFLite variant"):
        tflite.convert(module, "int4")


def test_mixed_precision_model_is_rebuilt_in_float32(model):
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = hmsa_keras.build_model(**TINY)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(model.get_weights())
    rebuilt = S.as_float32(mixed)
    assert rebuilt is not mixed
    assert {layer.compute_dtype for layer in rebuilt.network._flatten_layers()} == {"float32"}
    for a, b in zip(rebuilt.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert S.as_float32(model) is model


# ------------------------------------------------------------------ TFLite for apps, readers
@pytest.fixture(scope="module")
def app_files(module, tmp_path_factory):
    """The float32 file with its metadata (embedded + sidecar), and a classes-only file."""
    tmp = tmp_path_factory.mktemp("app")
    full, _ = tflite.write_tflite(
        str(tmp / "hmsa_float32.tflite"), module, "float32", tflite.convert(module, "float32")
    )
    slim, _ = tflite.write_tflite(
        str(tmp / "hmsa_classes.tflite"),
        module,
        "float32",
        tflite.convert(module, "float32", outputs=("classes",)),
    )
    return str(tmp / "hmsa_float32.tflite"), str(tmp / "hmsa_classes.tflite")


def test_tflite_metadata_is_embedded_and_beside_the_file(module, app_files, float32_tflite):
    from hmsa_keras.export.litert_runner import LiteRTSegmenter
    from hmsa_keras.export.litert_runner import read_metadata as runner_read

    path, _ = app_files
    meta = tflite.read_metadata(path)
    with open(tflite.sidecar_path(path)) as f:
        assert json.load(f) == meta
    assert runner_read(path) == meta  # the TF-free runner reads the same
    os.remove(tflite.sidecar_path(path))
    assert tflite.read_metadata(path) == meta  # from the flatbuffer itself
    assert (
        meta["scales"] == list(SCALES)
        and meta["flip"] is True
        and meta["num_classes"] == TINY["num_classes"]
    )
    assert meta["class_names"] == module.class_names and meta["normalization"]["inside_graph"]
    assert meta["input"]["min_side"] == 16
    assert meta["inputs"]["images"] == {
        "dtype": "uint8",
        "shape": [1, -1, -1, 3],
        "quantization": None,
    }
    assert set(meta["outputs"]) == {"classes", "probabilities"}
    assert meta["outputs"]["probabilities"]["dtype"] == "float32"
    # embedding changed nothing else: same outputs as the plain file
    img = _images((40, 48, 3), 7)
    a = LiteRTSegmenter(path).segment(img, probabilities=True)
    b = LiteRTSegmenter(float32_tflite).segment(img, probabilities=True)
    np.testing.assert_array_equal(a["classes"], b["classes"])
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])


def test_classes_only_tflite(model, app_files):
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    path = app_files[1]
    segmenter = LiteRTSegmenter(path)
    assert set(segmenter.outputs) == {"classes"}
    assert tflite.read_metadata(path)["outputs"] == {
        "classes": {"dtype": "int32", "shape": [1, -1, -1], "quantization": None}
    }
    with open(path, "rb") as f:
        assert "SOFTMAX" not in tflite.operator_codes(f.read())
    img = _images((48, 40, 3), 8)
    ref = model.segment(normalize(img[None]), scales=SCALES, flip=True)["classes"][0].numpy()
    assert np.mean(segmenter.segment(img)["classes"] == ref) >= 0.999


def test_runner_input_contract(app_files, float32_tflite):
    """Tiny images fail with the conventions' one-line message (metadata chain), or, for a
    file without metadata, with a clear line instead of XNNPack's; empty batches are empty."""
    from hmsa_keras import conventions
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    segmenter = LiteRTSegmenter(app_files[0])
    with pytest.raises(ValueError) as err:
        segmenter.segment(np.zeros((20, 50, 3), np.uint8), name="street.png")
    assert str(err.value) == "street.png: " + conventions.min_size_problem(20, 50, SCALES)
    assert segmenter.segment_batch(np.zeros((0, 67, 93, 3), np.uint8)).shape == (0, 67, 93)
    batch = _images((2, 40, 48, 3), 9)
    np.testing.assert_array_equal(
        segmenter.segment_batch(batch)[1], segmenter.segment(batch[1])["classes"]
    )
    with pytest.raises(ValueError, match="expected uint8"):
        segmenter.segment(np.zeros((40, 40, 3), np.float32))
    bare = LiteRTSegmenter(float32_tflite)  # no metadata: the chain is unknown
    assert bare.metadata is None
    with pytest.raises(ValueError, match=r"tiny.png: .* cannot run on an image of 2x2 \(HxW\)"):
        bare.segment(np.zeros((2, 2, 3), np.uint8), name="tiny.png")
    assert bare.segment(_images((40, 40, 3), 1))["classes"].shape == (
        40,
        40,
    )  # recovers after the error


def test_full_int8_converter_log_names_the_uint8_input(module, capfd):
    """The quantizer's log line names the interface type of float inputs; our input is
    uint8 pixels and the converter is told so."""
    calibration = [_images((48, 48, 3), 20)]
    content = tflite.convert(module, "full_int8", representative_images=calibration)
    out, err = capfd.readouterr()
    assert "input_inference_type: UINT8" in out + err
    assert "input_inference_type: FLOAT32" not in out + err
    summary = tflite.io_summary(content)
    assert (
        summary["inputs"]["images"]["dtype"] == "uint8"
        and summary["inputs"]["images"]["quantization"] is None
    )
    assert summary["outputs"]["classes"]["dtype"] == "int32"


def test_selective_quantization_keeps_chosen_ops_in_float(module):
    from ai_edge_litert.interpreter import Interpreter

    calibration = [_images((48, 48, 3), 21)]

    def float_resizes(content):
        it = Interpreter(model_content=content)
        tensors = {d["index"]: d for d in it.get_tensor_details()}
        kinds = set()
        for op in it._get_ops_details():
            if op["op_name"] == "RESIZE_BILINEAR":
                kinds.add(np.dtype(tensors[op["outputs"][0]]["dtype"]).name)
        return kinds

    plain = tflite.convert(module, "full_int8", representative_images=calibration)
    kept = tflite.convert(
        module, "full_int8", representative_images=calibration, float_ops=("RESIZE_BILINEAR",)
    )
    assert float_resizes(plain) == {"int8"}
    assert float_resizes(kept) == {"float32"}
    with pytest.raises(ValueError, match="full_int8 only"):
        tflite.convert(module, "float32", float_ops=("RESIZE_BILINEAR",))


def test_eval_reads_the_chain_from_exported_files(model, tmp_path, capsys):
    """hmsa-eval --saved_model / --tflite: the chain comes from the file's metadata (the
    label bug: a 0.5,1 export was reported as 0.5,1,2), and the mIoU table equals the
    Keras model's on the same split."""
    from hmsa_keras.cli import eval as cli
    from hmsa_keras.config import DataConfig
    from hmsa_keras.data import build_dataset
    from hmsa_keras.evaluation import evaluate
    from hmsa_keras.export import export_model
    from tests.eval_helpers import write_folder_dataset

    write_folder_dataset(
        tmp_path / "data", sizes=((64, 64), (64, 96), (48, 64)), num_classes=TINY["num_classes"]
    )
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path / "data"), val_split="val")
    export_model(
        model,
        str(tmp_path / "out"),
        scales=SCALES,
        flip=False,
        variants=("saved_model", "float32"),
        latency_size=None,
        warmup_size=(32, 32),
        echo=lambda line: None,
    )
    want = evaluate(
        model,
        build_dataset(cfg, "val", training=False, batch_size=1),
        TINY["num_classes"],
        chains=[SCALES],
    )[0].metrics["miou"]
    common = [
        "--dataset=folder",
        f"--data_dir={tmp_path / 'data'}",
        f"--output_dir={tmp_path / 'eval'}",
    ]
    for flag in (
        f"--saved_model={tmp_path / 'out' / 'hmsa'}",
        f"--tflite={tmp_path / 'out' / 'hmsa_float32.tflite'}",
    ):
        assert cli.TOOL.invoke(cli.main, [flag, *common]) == 0
        printed = capsys.readouterr().out
        assert "scales 0.5,1: 3 images" in printed, printed
        assert "0.5,1,2" not in printed
        with open(tmp_path / "eval" / "metrics_s0.5-1.json") as f:
            got = json.load(f)["miou"]
        assert got == pytest.approx(want, abs=2e-3), flag


def test_full_int8_keeps_the_size_arithmetic_in_float(module):
    """The chain's scaled sizes (floor([H, W] * scale)) must not be int8 numbers: quantized,
    they are off by pixels and clip at the calibration size (the int8 files agreed on 91% of
    the pixels at 512x1024 when calibrated on 128-pixel crops)."""
    from ai_edge_litert.interpreter import Interpreter

    calibration = [_images((48, 48, 3), 22)]
    plain = tflite.convert(
        module, "full_int8", representative_images=calibration, float_shape_math=False
    )
    found = tflite.shape_math_nodes(plain)
    assert found, "the all-int8 file quantizes the size arithmetic (what this guards against)"
    fixed = tflite.convert(module, "full_int8", representative_images=calibration)
    assert tflite.shape_math_nodes(fixed) == []
    it = Interpreter(model_content=fixed)
    assert any(
        np.dtype(d["dtype"]) == np.int8 and len(d["shape"]) == 4 for d in it.get_tensor_details()
    )

    def classes(content, image):
        interpreter = Interpreter(model_content=content)
        interpreter.resize_tensor_input(
            interpreter.get_input_details()[0]["index"], image[None].shape
        )
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        runner = interpreter.get_signature_runner()
        index = runner.get_output_details()["classes"]["index"]
        return interpreter.get_tensor(index)[0]

    image = _images((160, 200, 3), 23)  # larger than the calibration images
    ref = classes(tflite.convert(module, "float32"), image)
    assert np.mean(classes(fixed, image) == ref) >= np.mean(classes(plain, image) == ref)


def test_hmsa_export_defaults_to_the_run_chain(model, tmp_path):
    """hmsa-export without --scales exports the run's eval chain (config.json), like
    hmsa-eval and hmsa-predict; the SavedModel lands in <output_dir>/<name>/<version>/."""
    from hmsa_keras.cli import export as cli
    from hmsa_keras.config import DataConfig
    from tests.eval_helpers import write_folder_dataset, write_run_dir

    write_folder_dataset(tmp_path / "data", sizes=((64, 64),), num_classes=TINY["num_classes"])
    run = write_run_dir(
        tmp_path / "run",
        model,
        DataConfig(dataset="folder", data_dir=str(tmp_path / "data")),
        eval_scales=(0.5, 1.0),
    )
    out = tmp_path / "out"
    assert (
        cli.TOOL.invoke(
            cli.main,
            [
                f"--model_dir={run}",
                f"--output_dir={out}",
                "--variants=saved_model",
                "--eval_images=0",
                "--latency_size=0",
                "--serving_version=2",
            ],
        )
        == 0
    )
    with open(out / "hmsa" / "2" / S.METADATA_FILE) as f:
        assert json.load(f)["scales"] == [0.5, 1.0]
    with open(out / "export_report.json") as f:
        assert json.load(f)["scales"] == [0.5, 1.0]
