"""TF Serving side of the export: layout, warm-up records, encoded-image signatures, the REST
and gRPC clients (against the SavedModel through TensorFlow's own loader, behind the
loopback emulator), empty batches and the minimum-size rule.

One tiny model exported once for the module (the slow part).
"""

import io
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # export, servers

tf = pytest.importorskip("tensorflow")

import hmsa_keras  # noqa: E402
from hmsa_keras import (
    conventions,  # noqa: E402
    image_io,  # noqa: E402
)
from hmsa_keras.data.normalization import normalize  # noqa: E402
from hmsa_keras.export import grpc_client as G  # noqa: E402
from hmsa_keras.export import saved_model as S  # noqa: E402
from hmsa_keras.export import serving_client as REST  # noqa: E402
from tests.helpers.common import TINY as TINY_MODEL  # noqa: E402

SCALES = (0.5, 1.0)
K = 4


def _picture(h, w, seed):
    """A smooth random picture (so that the segmentation has regions)."""
    from PIL import Image

    small = (
        np.random.RandomState(seed)
        .randint(0, 256, (max(h // 8, 1), max(w // 8, 1), 3))
        .astype(np.uint8)
    )
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def model():
    return hmsa_keras.build_model(num_classes=K, **TINY_MODEL)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    module = S.HMSAExportModule(model, SCALES, flip=False, class_names=[f"c{i}" for i in range(K)])
    path = S.export_serving(
        None, str(base), name="hmsa", version=3, module=module, warmup_size=(48, 64)
    )
    return str(base), path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


@pytest.fixture(scope="module")
def server(exported):
    from hmsa_keras.export.serving_emulator import ServingEmulator

    with ServingEmulator(os.path.join(exported[0], "hmsa"), name="hmsa") as srv:
        yield srv


def _keras_classes(model, image):
    return model.segment(normalize(image[None]), scales=SCALES)["classes"][0].numpy()


def test_versioned_layout_and_declared_shapes(exported, loaded):
    base, path = exported
    assert path == os.path.join(base, "hmsa", "3")
    for name in ("saved_model.pb", S.WARMUP_FILE, S.METADATA_FILE):
        assert os.path.isfile(os.path.join(path, name)), name
    config = open(os.path.join(base, "models.config")).read()
    assert 'name: "hmsa"' in config and os.path.abspath(os.path.join(base, "hmsa")) in config
    assert "max_batch_size" in open(os.path.join(base, "batching_parameters.txt")).read()
    assert S.resolve_saved_model_dir(base) == path  # base dir -> its one model's highest version
    assert S.resolve_saved_model_dir(os.path.join(base, "hmsa")) == path
    # the signature defs clients see (saved_model_cli / GetModelMetadata): [-1, -1, -1, 3] uint8
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString(
        open(os.path.join(path, "saved_model.pb"), "rb").read()
    )
    sigs = sm.meta_graphs[0].signature_def
    for name in ("serving_default", "with_details", "segment_with_scales"):
        images = sigs[name].inputs["images"]
        assert images.dtype == tf.uint8.as_datatype_enum
        assert [d.size for d in images.tensor_shape.dim] == [-1, -1, -1, 3]
    encoded = sigs["serving_encoded"].inputs["image_bytes"]
    assert encoded.dtype == tf.string.as_datatype_enum and [
        d.size for d in encoded.tensor_shape.dim
    ] == [-1]
    assert set(sigs["serving_encoded_png"].outputs) == {"classes_png_bytes"}
    meta = json.load(open(os.path.join(path, S.METADATA_FILE)))
    assert meta["scales"] == list(SCALES) and meta["class_names"] == [f"c{i}" for i in range(K)]
    assert meta["signatures"]["serving_default"]["inputs"]["images"] == "uint8 [?,?,?,3]"
    assert "DecodeImage" in meta["graph_ops"] or "DecodePng" in meta["graph_ops"]
    assert "EncodePng" in meta["graph_ops"] and meta["graph_def_producer"] > 0


def test_warmup_file_holds_prediction_logs_that_run(exported, loaded):
    """Every record is a PredictionLog{predict_log{request}} naming the model and one
    signature; its inputs run through that signature (what TF Serving does at load)."""
    path = exported[1]
    records = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(path, S.WARMUP_FILE))]
    seen = set()
    for record in records:
        fields = G.parse_fields(record)
        assert [n for n, _, _ in fields] == [6], "PredictionLog.predict_log (field 6) only"
        predict_log = G.parse_fields(fields[0][2])
        assert [n for n, _, _ in predict_log] == [1], "PredictLog.request (field 1)"
        model, signature, inputs = G.decode_predict_request(predict_log[0][2])
        assert model == "hmsa"
        seen.add(signature)
        feed = {
            k: tf.constant(v) if v.dtype != object else tf.constant(list(v), tf.string)
            for k, v in inputs.items()
        }
        out = loaded.signatures[signature](**feed)
        assert out, signature
        if "images" in inputs:
            assert inputs["images"].shape == (1, 48, 64, 3) and inputs["images"].dtype == np.uint8
    assert seen == set(loaded.signatures)
    try:  # the official protos, when installed (tensorflow-serving-api; not a dependency)
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        return
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.predict_log.request.model_spec.name == "hmsa"
    assert log.predict_log.request.model_spec.signature_name in seen


def test_b64_png_and_grpc_give_the_uint8_signature_classes(model, server):
    image = _picture(64, 80, 1)
    want = _keras_classes(model, image)
    png = image_io.encode_png(image)
    url = server.rest_url + ":predict"
    results = {
        "rest uint8 json": REST.classes_of(REST.predict(url, image)),
        "rest b64 -> int": REST.classes_of(REST.predict_encoded(url, png, "serving_encoded")),
        "rest b64 -> png": REST.classes_of(REST.predict_encoded(url, png, "serving_encoded_png")),
    }
    client = G.PredictionClient(server.grpc_target, "hmsa")
    try:
        results["grpc uint8"] = client.segment(image)
        results["grpc png -> int"] = client.segment(png, "serving_encoded")
        results["grpc png -> png"] = client.segment(png, "serving_encoded_png")
    finally:
        client.close()
    for name, got in results.items():
        assert got.dtype == np.int32 and got.shape == image.shape[:2], name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # the response of the PNG signature is b64 over REST (output name ends in _bytes)
    body, _, received = REST.post(url, REST.build_encoded_request(png))
    assert received < png.__len__() + 2000


def test_rest_client_sends_exif_rotated_jpeg_upright(model, server, tmp_path):
    """A phone photo (EXIF orientation 6): the client re-encodes it upright, so the
    served result is the segmentation of what a viewer shows."""
    from PIL import Image

    upright = _picture(80, 64, 2)
    stored = np.ascontiguousarray(
        np.rot90(upright, 1)
    )  # orientation 6: displayed = stored rotated 90 cw
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    np.testing.assert_array_equal(image_io.read_image(path), upright)
    data = image_io.image_bytes(path)
    got = REST.classes_of(REST.predict_encoded(server.rest_url + ":predict", data))
    np.testing.assert_array_equal(got, _keras_classes(model, upright))


def test_empty_batches_return_empty_results(loaded):
    empty = tf.zeros([0, 67, 93, 3], tf.uint8)
    assert loaded.signatures["serving_default"](images=empty)["classes"].shape == (0, 67, 93)
    details = loaded.signatures["with_details"](images=empty)
    assert details["probabilities"].shape == (0, 67, 93, K) and details["attention"].shape == (
        0,
        67,
        93,
        2,
    )
    dyn = loaded.signatures["segment_with_scales"](images=empty, scales=tf.constant([0.5, 1.0]))
    assert dyn["classes"].shape == (0, 67, 93) and dyn["probabilities"].shape == (0, 67, 93, K)
    none = tf.constant([], tf.string)
    assert loaded.signatures["serving_encoded"](image_bytes=none)["classes"].shape[0] == 0
    assert loaded.signatures["serving_encoded_png"](image_bytes=none)[
        "classes_png_bytes"
    ].shape == (0,)


@pytest.mark.parametrize("size", [(20, 50), (31, 200), (1, 1)])
def test_too_small_images_fail_with_the_conventions_message(loaded, server, size):
    h, w = size
    want = "images: " + conventions.min_size_problem(h, w, SCALES)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures["serving_default"](images=tf.zeros([1, h, w, 3], tf.uint8))
    assert f"[{want}]" in err.value.message
    client = G.PredictionClient(server.grpc_target, "hmsa")
    try:
        with pytest.raises(RuntimeError, match="INVALID_ARGUMENT") as err:
            client.predict({"images": np.zeros((1, h, w, 3), np.uint8)})
        assert want in str(err.value)
    finally:
        client.close()
    # the dynamic chain applies the rule to the chain of the request
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures["segment_with_scales"](
            images=tf.zeros([1, 60, 60, 3], tf.uint8), scales=tf.constant([1.0, 0.25])
        )
    assert "images: " + conventions.min_size_problem(60, 60, (0.25, 1.0)) in err.value.message


def test_encoded_inputs_are_checked(loaded):
    png = image_io.encode_png(_picture(64, 64, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must hold encoded PNG or JPEG"):
        loaded.signatures["serving_encoded"](image_bytes=tf.constant([png, b"not an image"]))
    other = image_io.encode_png(_picture(48, 64, 4))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must share a size"):
        loaded.signatures["serving_encoded"](image_bytes=tf.constant([png, other]))
    two = loaded.signatures["serving_encoded_png"](image_bytes=tf.constant([png, png]))[
        "classes_png_bytes"
    ]
    maps = [np.asarray(__import__("PIL.Image").Image.open(io.BytesIO(b))) for b in two.numpy()]
    assert maps[0].dtype == np.uint8 and maps[0].shape == (64, 64)
    np.testing.assert_array_equal(maps[0], maps[1])


def test_rest_errors_and_bad_requests(server):
    with pytest.raises(RuntimeError, match="images: image of 8x8"):
        REST.predict(server.rest_url + ":predict", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        REST.build_request(np.zeros((8, 8, 3), np.float32))
