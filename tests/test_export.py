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
from tests.helpers.common import TINY as TINY_MODEL  # noqa: E402
from hmsa_keras.data.normalization import normalize  # noqa: E402
from hmsa_keras.export import saved_model as S  # noqa: E402
from hmsa_keras.export import tflite  # noqa: E402

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
    return S.export_saved_model(None, str(tmp_path_factory.mktemp("sm") / "saved_model"), module=module)


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
    print(json.dumps({"errors": errors, "signatures": sorted(k for k in meta.signature_def if not k.startswith("__"))}))
""")


@pytest.fixture(scope="module")
def serving(saved_model_dir, tmp_path_factory):
    """Runs the SavedModel in a fresh process importing only TensorFlow."""
    tmp = tmp_path_factory.mktemp("serving")
    images = _images((2, 64, 48, 3), 0)
    np.save(tmp / "images.npy", images)
    script = tmp / "serve.py"
    script.write_text(SERVING_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), saved_model_dir, str(tmp / "images.npy"),
                           str(tmp / "out.npz")], capture_output=True, text=True, timeout=300, env=ENV,
                          cwd=str(tmp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return images, dict(np.load(tmp / "out.npz")), info


def test_saved_model_matches_keras_in_tensorflow_only_process(model, serving):
    images, out, info = serving
    assert info["signatures"] == ["segment_with_scales", "serving_default", "with_details"]
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
    np.testing.assert_allclose(out["segment_with_scales/probabilities"], tf.nn.softmax(ref["logits"]).numpy(),
                               atol=1e-5)


def test_bad_inputs_fail_with_clear_errors(serving):
    errors = serving[2]["errors"]
    for what in ("channels", "rank"):
        assert errors[what] and "`images` must be a 4-D uint8 batch [batch, height, width, 3]" in errors[what], \
            errors[what]
    assert errors["dtype"] and "uint8" in errors["dtype"], errors["dtype"]


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
        sys.argv = ["litert_runner.py", {float32_tflite!r}, *{paths!r}, "--out", {str(tmp_path / 'out')!r}, "--raw"]
        try:
            runpy.run_path({runner!r}, run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        assert "tensorflow" not in sys.modules and "hmsa_keras" not in sys.modules, "not standalone"
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV,
                          cwd=str(tmp_path))
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
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(ref["logits"][0]).numpy(), atol=1e-4)


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
