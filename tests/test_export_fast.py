"""Fast checks of the deployment helpers that need no exported model: the protobuf wire
format of the gRPC client and warm-up file (against TensorFlow's own TensorProto), the
TensorFlow-free image reader (every mode, EXIF, 16-bit) and the copies of the
minimum-size rule (LiteRT runner, SavedModel graph) against hmsa_keras.conventions."""

import io

import numpy as np
import pytest
from PIL import Image

from hmsa_keras import conventions, image_io
from hmsa_keras.export import grpc_client as G
from hmsa_keras.export import litert_runner
from hmsa_keras.export import serving_client as REST
from tests.conftest import REPO


# ----------------------------------------------------------------------------- wire format
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3),
        np.array([[-3, 7], [2**31 - 1, -(2**31)]], np.int32),
        np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5),
        np.zeros((0, 5, 7, 3), np.uint8),
        np.array([b"\x89PNG\x00binary", b""], dtype=object),
    ],
)
def test_tensor_proto_matches_tensorflow(array):
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.framework import tensor_pb2

    parsed = tensor_pb2.TensorProto.FromString(G.encode_tensor(array))  # ours, read by TF
    back = tf.make_ndarray(parsed)
    assert back.shape == array.shape
    if array.dtype == object:
        assert list(back.reshape(-1)) == list(array.reshape(-1))
    else:
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
    # TF's encoding, read by ours (tensor_content or typed *_val fields)
    np.testing.assert_array_equal(
        G.decode_tensor(tf.make_tensor_proto(array).SerializeToString()), array
    )


def test_typed_value_fields_are_decoded():
    from tensorflow.core.framework import tensor_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    proto.int_val.extend([1, -2, 3, 4, 5, 6])
    np.testing.assert_array_equal(
        G.decode_tensor(proto.SerializeToString()), [[1, -2, 3], [4, 5, 6]]
    )
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add(size=3)
    proto.float_val.append(0.5)  # one value broadcast, as TensorFlow does
    np.testing.assert_array_equal(G.decode_tensor(proto.SerializeToString()), [0.5, 0.5, 0.5])


def test_predict_request_round_trip_and_field_numbers():
    image = np.random.RandomState(0).randint(0, 256, (1, 3, 4, 3)).astype(np.uint8)
    data = G.encode_predict_request("hmsa", "with_details", {"images": image}, version=7)
    model, signature, inputs = G.decode_predict_request(data)
    assert (model, signature) == ("hmsa", "with_details")
    np.testing.assert_array_equal(inputs["images"], image)
    fields = G.parse_fields(data)
    assert [n for n, _, _ in fields] == [1, 2]  # model_spec, inputs
    spec = {n: v for n, _, v in G.parse_fields(fields[0][2])}
    assert (
        spec[1] == b"hmsa" and spec[3] == b"with_details" and G.parse_fields(spec[2]) == [(1, 0, 7)]
    )
    try:  # the official messages, when tensorflow-serving-api is installed (not a dependency)
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    except ImportError:
        return
    request = predict_pb2.PredictRequest.FromString(data)
    assert request.model_spec.name == "hmsa" and request.model_spec.version.value == 7
    log = prediction_log_pb2.PredictionLog.FromString(
        G.encode_prediction_log("hmsa", "x", {"images": image})
    )
    assert log.predict_log.request.model_spec.signature_name == "x"
    response = predict_pb2.PredictResponse.FromString(
        G.encode_predict_response({"classes": image[..., 0]})
    )
    assert list(response.outputs["classes"].tensor_shape.dim[i].size for i in range(3)) == [1, 3, 4]


def test_rest_response_parsing():
    png = b"\x89PNG fake"
    import base64

    b64 = {"b64": base64.b64encode(png).decode()}
    assert REST.parse_response({"predictions": [b64]})["classes_png_bytes"][0] == png
    assert REST.parse_response({"outputs": [[[1, 2]]]})["classes"].shape == (1, 1, 2)
    out = REST.parse_response({"outputs": {"classes": [[[0]]], "scales": [0.5, 1.0]}})
    assert set(out) == {"classes", "scales"}
    with pytest.raises(RuntimeError, match="TF Serving error: boom"):
        REST.parse_response({"error": "boom"})
    body = REST.build_encoded_request([png, png])
    assert body["instances"] == [b64, b64]


# ----------------------------------------------------------------------------- minimum size
def test_runner_standalone_uses_the_conventions_rule(tmp_path):
    """Copied to a folder without hmsa_keras importable, the runner loads the project's own
    conventions.py and image_io.py from beside it (export/ holds links to them)."""
    import shutil
    import subprocess
    import sys

    for name in ("litert_runner.py", "conventions.py", "image_io.py"):
        shutil.copy(REPO / "export" / name, tmp_path / name)  # copies the link targets
    code = (
        "import sys; sys.modules['hmsa_keras'] = None; "  # as on a device without the package
        "import litert_runner as r, conventions as c; "
        "print(r.min_size_problem is c.min_size_problem, r.image_io.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "True" and str(tmp_path) in proc.stdout
    assert litert_runner.min_size_problem is conventions.min_size_problem


def test_saved_model_graph_message_is_the_conventions_message():
    tf = pytest.importorskip("tensorflow")
    from hmsa_keras.export.saved_model import min_size_message

    for (h, w), s in (
        ((20, 50), 0.5),
        ((1, 1), 0.5),
        ((100, 10), 1.0),
        ((60, 60), 0.25),
        ((20, 40), 0.75),
    ):
        got = (
            min_size_message(tf.constant(h), tf.constant(w), tf.constant(s, tf.float32))
            .numpy()
            .decode()
        )
        assert got == "images: " + conventions.min_size_problem(h, w, (s,))


# ----------------------------------------------------------------------------- image reader
def _rgb(h=12, w=20, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def _mode_files(tmp_path):
    """{mode: (path, expected uint8 RGB)} with expectations computed independently."""
    rgb = _rgb()
    grey = rgb[..., 0]
    out = {
        "RGB": (_save(tmp_path, "rgb.png", Image.fromarray(rgb)), rgb),
        "L": (_save(tmp_path, "l.png", Image.fromarray(grey)), np.repeat(grey[..., None], 3, -1)),
        "LA": (
            _save(tmp_path, "la.png", Image.fromarray(np.dstack([grey, 255 - grey]))),
            np.repeat(grey[..., None], 3, -1),
        ),
        "RGBA": (_save(tmp_path, "rgba.png", Image.fromarray(np.dstack([rgb, grey]))), rgb),
    }
    palette = Image.fromarray(rgb).quantize(16)
    out["P"] = (_save(tmp_path, "p.png", palette), np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    out["CMYK"] = (_save(tmp_path, "cmyk.tif", cmyk), np.asarray(cmyk.convert("RGB")))
    sixteen = (
        grey.astype(np.uint16) * 257
        + np.arange(grey.size, dtype=np.uint16).reshape(grey.shape) % 200
    )
    out["I;16"] = (
        _save(tmp_path, "i16.png", Image.fromarray(sixteen)),
        np.repeat((sixteen >> 8).astype(np.uint8)[..., None], 3, -1),
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers rotate 90 degrees clockwise
    out["EXIF6"] = (
        _save(tmp_path, "exif6.png", Image.fromarray(rgb), exif=exif.tobytes()),
        np.ascontiguousarray(np.rot90(rgb, -1)),
    )
    exif[0x0112] = 3
    out["EXIF3"] = (
        _save(tmp_path, "exif3.png", Image.fromarray(rgb), exif=exif.tobytes()),
        np.ascontiguousarray(rgb[::-1, ::-1]),
    )
    return out


def test_image_io_reads_every_mode(tmp_path):
    for mode, (path, want) in _mode_files(tmp_path).items():
        got = image_io.read_image(path)
        assert got.dtype == np.uint8 and got.shape == want.shape, mode
        np.testing.assert_array_equal(got, want, err_msg=mode)
        with open(path, "rb") as f:
            np.testing.assert_array_equal(
                image_io.read_image(f.read()), want, err_msg=mode + " (bytes)"
            )
    assert litert_runner.read_image(_mode_files(tmp_path)["EXIF6"][0]).shape == (20, 12, 3)


def test_image_io_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nope.png: image file does not exist"):
        image_io.read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        image_io.read_image(bad)


def test_encoded_bytes_are_the_file_only_when_tensorflow_reads_it_the_same(tmp_path):
    files = _mode_files(tmp_path)
    assert not image_io.needs_conversion(files["RGB"][0])
    for mode in ("EXIF6", "I;16", "RGBA", "P", "CMYK"):
        assert image_io.needs_conversion(files[mode][0]), mode
        data = image_io.image_bytes(files[mode][0])
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(data))), files[mode][1], err_msg=mode
        )


def test_runner_reader_agrees_with_the_project_reader(tmp_path):
    """The one pixel rule (hmsa_keras/image_io.py) as the LiteRT runner and the serving
    clients load it standalone (the file beside them, export/image_io.py) and as the data
    pipeline reads it (hmsa_keras.data.io.read_image) gives the same pixels on every mode."""
    import importlib.util

    from hmsa_keras.data import io as data_io

    beside = REPO / "export" / "image_io.py"
    spec = importlib.util.spec_from_file_location("standalone_image_io", beside)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    files = _mode_files(tmp_path)
    for mode, (path, want) in files.items():
        np.testing.assert_array_equal(standalone.read_image(path), want, err_msg=mode)
        np.testing.assert_array_equal(
            image_io.read_image(path), data_io.read_image(str(path)), err_msg=mode
        )


def test_automatic_float_ops_choice():
    from hmsa_keras.export import choose_float_ops

    def row(ops, deploy, val=0.99):
        return {"float_ops": list(ops), "agreement": val, "agreement_deploy": deploy}

    sweep = [
        row((), 0.9726),
        row(("CONV_2D",), 0.9727),
        row(("MUL",), 0.9873),
        row(("ADD",), 0.9725),
    ]
    assert choose_float_ops(sweep, 0.97) == ()  # all-int8 reaches the target
    assert choose_float_ops(sweep, 0.98) == ("MUL",)
    assert choose_float_ops([row((), 0.95), row(("ADD",), 0.9505)], 0.97) == ()  # no op type helps
    # without a deployment-size column, the validation agreement decides
    assert choose_float_ops(
        [{"float_ops": [], "agreement": 0.9}, {"float_ops": ["MUL"], "agreement": 0.95}]
    ) == ("MUL",)


def test_report_measures_each_size_once():
    """The calibration size equal to the deployment size adds no second (identical) column."""
    import numpy as np

    import hmsa_keras
    from hmsa_keras.export import report as R
    from tests.conftest import TINY

    model = hmsa_keras.build_model(num_classes=3, **TINY)
    images = [np.zeros((32, 48, 3), np.uint8)]
    both = R.EvalSet(
        model, images, None, (1.0,), False, deploy_size=(64, 64), calibration_size=(64, 64)
    )
    assert sorted(both.sets) == ["deploy", "val"]
    other = R.EvalSet(
        model, images, None, (1.0,), False, deploy_size=(64, 64), calibration_size=(32, 32)
    )
    assert sorted(other.sets) == ["calibration", "deploy", "val"]
