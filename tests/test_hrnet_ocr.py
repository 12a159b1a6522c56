"""HRNetV2 + OCR: shapes, the OCR layers against NumPy, parity with the reference
through the committed golden (tests/goldens, made by make_hrnet_ocr_golden.py from
NVIDIA/semantic-segmentation in PyTorch), freezing, training and export."""

import keras
import numpy as np
import pytest

import hmsa_keras
from hmsa_keras.models.hrnet import build_hrnet, hrnet_channels
from hmsa_keras.models.ocr import ObjectAttention, SpatialGather
from tests.goldens import compare_hrnet_ocr as C

TOL = 1e-4  # max abs difference to the reference, float32
TINY_OCR = dict(
    num_classes=3,
    trunk="hrnetv2_w48",
    hrnet_width=4,
    ocr_mid_channels=16,
    ocr_key_channels=8,
    attention_channels=8,
)


@pytest.fixture(scope="module")
def golden():
    return C.Golden()


@pytest.fixture(scope="module")
def golden_model(golden):
    return C.convert(golden)


def test_trunk_is_stride_4_with_15_width_channels_and_ceil_sizes(golden_model):
    trunk = golden_model.network.get_layer("trunk")  # hrnet_width 4
    out = trunk(np.zeros((1, 97, 131, 3), "float32"))
    # stride-2 3x3 convolutions pad 1 on each side (PyTorch): 97 -> 49 -> 25, 131 -> 66 -> 33
    assert out.shape == (1, 25, 33, 60) and hrnet_channels(48) == 720
    names = [layer.name for layer in trunk.layers]
    assert "stage4_m2_br3_b3_conv2" in names and "stage4_m2_fuse3_from0_down2_conv" in names
    assert "transition3_br3_down0_conv" in names and "stage2_m1_br0_b0_conv1" not in names


def test_trainable_parameters_equal_the_references(golden, golden_model):
    """PyTorch's parameter count of the golden network (weights and biases of convolutions,
    BN affine) against the Keras model's trainable weights."""
    trainable = sum(int(np.prod(w.shape)) for w in golden_model.network.trainable_weights)
    assert trainable == golden.meta["parameters"]


def test_spatial_gather_and_object_attention_against_numpy():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 5, 7, 6)).astype("float32")
    regions = 3 * rng.normal(size=(2, 5, 7, 4)).astype("float32")
    centres = SpatialGather()(feats, regions).numpy()
    w = np.exp(regions.reshape(2, 35, 4).astype(np.float64))
    w /= w.sum(axis=1, keepdims=True)  # softmax over the pixels, per class
    expected = np.einsum("bnk,bnc->bkc", w, feats.reshape(2, 35, 6).astype(np.float64))
    np.testing.assert_allclose(centres[:, :, 0, :], expected, atol=1e-5)

    query = rng.normal(size=(2, 5, 7, 8)).astype("float32")
    key, value = rng.normal(size=(2, 2, 4, 1, 8)).astype("float32")
    out = ObjectAttention()(query, key, value).numpy()
    sim = np.einsum("bhwd,bkd->bhwk", query, key[:, :, 0]) / np.sqrt(8)
    sim = np.exp(sim - sim.max(-1, keepdims=True))
    sim /= sim.sum(-1, keepdims=True)  # softmax over the classes, per pixel
    np.testing.assert_allclose(out, np.einsum("bhwk,bkd->bhwd", sim, value[:, :, 0]), atol=1e-5)


def test_segmenter_outputs_layer_groups_and_config(golden_model):
    out = golden_model.network(np.zeros((2, 33, 47, 3), "float32"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "logits": (2, 33, 47, 3),
        "attention": (2, 33, 47, 1),
        "aux_logits": (2, 33, 47, 3),
    }
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in out.values())
    weighted = [layer.name for layer in golden_model.network.layers if layer.weights]
    assert "trunk" in weighted
    assert all(n == "trunk" or n.startswith(("ocr_", "aux_", "attn_")) for n in weighted), weighted
    config = golden_model.get_config()
    assert config["trunk"] == "hrnetv2_w48" and config["head"] == "ocr" and config["aux_head"]
    assert (
        config["hrnet_width"],
        config["ocr_mid_channels"],
        config["ocr_key_channels"],
        config["attention_channels"],
    ) == (4, 32, 16, 16)


def test_freeze_groups_cover_the_ocr_layers(golden_model):
    layers = {layer.name: layer for layer in golden_model.network.layers if layer.weights}
    try:
        golden_model.set_frozen(["seg_head"])
        assert not layers["ocr_cls"].trainable and not layers["ocr_pixel_1_conv"].trainable
        assert not layers["aux_out"].trainable
        assert layers["attn_out"].trainable and layers["trunk"].trainable
        golden_model.set_frozen(["trunk", "attention"])
        assert not layers["trunk"].trainable and not layers["attn_1_conv"].trainable
        assert layers["ocr_cls"].trainable
    finally:
        golden_model.set_frozen([])


def test_head_and_trunk_must_match():
    with pytest.raises(ValueError, match="does not run on trunk"):
        hmsa_keras.build_model(num_classes=3, trunk="hrnetv2_w48", head="deeplabv3plus")
    with pytest.raises(ValueError, match="does not run on trunk"):
        hmsa_keras.build_model(num_classes=3, trunk="mobilenetv2", head="ocr")
    with pytest.raises(ValueError, match="hrnet_width"):
        build_hrnet(0)


# ----------------------------------------------------------------------------- parity
def test_golden_per_scale_logits_aux_and_attention(golden, golden_model):
    diffs = C.per_scale_differences(golden_model, golden)
    assert len(diffs) == 4 * len(golden.per_scale)
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("flip", [False, True])
def test_golden_fused_two_scale_chain(golden, golden_model, flip):
    assert C.fused_differences(golden_model, golden, (0.5, 1.0), flip) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_golden_fused_four_scale_chain(golden, golden_model, flip):
    assert C.fused_differences(golden_model, golden, (0.25, 0.5, 1.0, 2.0), flip) <= TOL


def test_golden_training_fusion_of_aux_and_loss_weights(golden, golden_model):
    """Aux logits fused with the same attention, loss 1.0/0.4/0.05 as two_scale_forward."""
    diffs = C.training_differences(golden_model, golden)
    assert max(diffs.values()) <= TOL, diffs


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_tiny_hrnet_ocr_trains_a_few_steps_with_the_aux_loss():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = hmsa_keras.build_model(**TINY_OCR)
    # eagerly: tracing the HRNet training step takes minutes on a 2-core CPU, two steps seconds
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="ce", run_eagerly=True)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 48, 64, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(4, 48, 64)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    before = {w.path: w.numpy().copy() for w in model.network.trainable_weights}
    history = {k: v[-1] for k, v in model.fit(data, epochs=1, verbose=0).history.items()}
    assert all(np.isfinite(v) for v in history.values()), history
    # the reference's weights: 1.0 fused + 0.4 fused aux (OCR_ALPHA) + 0.05 per scale
    expected = (
        history["fused"] + 0.4 * history["aux"] + 0.05 * (history["scale_0.5"] + history["scale_1"])
    )
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-5)
    changed = {
        w.path for w in model.network.trainable_weights if not np.array_equal(before[w.path], w)
    }
    for layer in (
        "stem1_conv",
        "stage4_m2_br3_b3_conv2",
        "ocr_cls",
        "aux_out",
        "ocr_pixel_1_conv",
        "attn_out",
    ):
        assert any(p.startswith(layer + "/") for p in changed), layer


@pytest.mark.slow
def test_converted_model_exports_to_saved_model_and_builtin_float32_tflite(golden_model, tmp_path):
    from hmsa_keras.export import export_model

    images = [
        np.random.RandomState(i).randint(0, 256, (49, 67, 3)).astype(np.uint8) for i in range(2)
    ]
    report = export_model(
        golden_model,
        str(tmp_path),
        scales=(0.5, 1.0),
        flip=False,
        variants=("saved_model", "float32"),
        eval_images=images,
        latency_size=None,
        echo=lambda *a: None,
    )
    rows = {row["variant"]: row for row in report["artefacts"]}
    assert rows["float32"]["builtin_ops_only"]  # export_model refuses Flex/custom ops
    assert rows["saved_model"]["agreement"] == 1.0 and rows["float32"]["agreement"] >= 0.999
