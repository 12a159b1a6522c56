"""Trunks, heads, the segmenter and the HMSA model: shapes, strides, saving, errors."""

import numpy as np
import pytest

import hmsa_keras
from hmsa_keras.models import HMSA, build_trunk
from tests.conftest import TINY
from tests.model_harness import run_standard_checks


def _dilations(trunk_model):
    inner = [l for l in trunk_model.layers if hasattr(l, "layers")][0]
    return {l.name: l.dilation_rate[0] for l in inner.layers if hasattr(l, "dilation_rate")}


@pytest.mark.parametrize("output_stride", [8, 16])
def test_mobilenet_trunk_output_stride_and_dilation(output_stride):
    trunk = build_trunk("mobilenetv2", 0.35, output_stride)
    low, high = trunk(np.zeros((1, 64, 96, 3), "float32"))
    assert low.shape[1:3] == (16, 24)  # stride 4
    assert high.shape[1:3] == (64 // output_stride, 96 // output_stride)
    d = _dilations(trunk)
    if output_stride == 16:
        assert (
            d["block_13_depthwise"] == 1
            and d["block_14_depthwise"] == 2
            and d["block_12_depthwise"] == 1
        )
    else:
        assert d["block_6_depthwise"] == 1 and d["block_7_depthwise"] == 2
        assert d["block_13_depthwise"] == 2 and d["block_16_depthwise"] == 4


def test_resnet50_os8_has_dilated_convolutions_and_40m_params():
    model = HMSA(19, trunk="resnet50", output_stride=8)
    d = _dilations(model.network.get_layer("trunk"))
    assert (
        d["conv4_block1_2_conv"] == 1
        and d["conv4_block2_2_conv"] == 2
        and d["conv5_block3_2_conv"] == 4
    )
    assert 38e6 < model.count_params() < 43e6  # reference: about 40M
    low, high = model.network.get_layer("trunk")(np.zeros((1, 64, 64, 3), "float32"))
    assert high.shape == (1, 8, 8, 2048) and low.shape == (1, 16, 16, 256)


def test_dilated_trunk_keeps_weights_of_the_original():
    """Conversion changes strides/dilation only: an OS8 and an OS16 trunk built from the
    same weights file hold identical weights."""
    import os
    import tempfile

    import keras

    base = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35
    )
    path = os.path.join(tempfile.mkdtemp(), "mnv2.weights.h5")
    base.save_weights(path)
    t8 = build_trunk("mobilenetv2", 0.35, 8, weights=path)
    t16 = build_trunk("mobilenetv2", 0.35, 16, weights=path)
    for a, b in zip(t8.get_weights(), t16.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(t8.get_weights()[0], base.get_weights()[0])


def test_segmenter_outputs_at_input_size_with_aux_and_deconv_head():
    model = HMSA(5, attention_head="deconv", aux_head=True, **TINY)
    out = model.network(np.zeros((2, 65, 97, 3), "float32"))
    assert out["logits"].shape == (2, 65, 97, 5)
    assert out["attention"].shape == (2, 65, 97, 1)
    attention = np.asarray(out["attention"])
    assert attention.min() >= 0.0 and attention.max() <= 1.0  # a probability
    assert out["aux_logits"].shape == (2, 65, 97, 5)
    assert any(l.name.startswith("attn_deconv") for l in model.network.layers)


def test_trunk_batchnorm_momentum_is_set():
    import keras

    model = HMSA(3, bn_momentum=0.95, sync_bn=True, **TINY)
    trunk = model.network.get_layer("trunk")
    inner = [l for l in trunk.layers if hasattr(l, "layers")][0]
    bns = [l for l in inner.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == 0.95 and l.synchronized for l in bns)


@pytest.mark.parametrize(
    "fusion",
    [
        "hierarchical",
        "explicit",
        "single",
        pytest.param("mean", marks=pytest.mark.slow),
        pytest.param("max", marks=pytest.mark.slow),
    ],
)
def test_save_reload_keras_and_weights_identical(tmp_path, fusion):
    """The shared harness: config round trip, .keras and weights-file round trips."""
    scales = (0.5, 1.0, 2.0) if fusion == "explicit" else (0.5, 1.0)
    x = np.random.default_rng(0).normal(size=(1, 48, 64, 3)).astype("float32")
    model = run_standard_checks(
        lambda: HMSA(3, fusion=fusion, train_scales=scales, aux_head=fusion == "mean", **TINY),
        x,
        tmp_path,
    )
    assert model.get_config()["train_scales"] == list(scales if fusion != "single" else (1.0,))


def test_every_constructor_argument_is_in_the_config():
    import inspect

    names = [p for p in inspect.signature(HMSA.__init__).parameters if p not in ("self", "kwargs")]
    config = HMSA(3, **TINY).get_config()
    assert set(names) <= set(config), set(names) - set(config)
    assert "ignore_label" not in config


def test_config_saved_before_ignore_label_was_dropped_still_loads():
    config = HMSA(3, **TINY).get_config()
    old = dict(config, ignore_label=255)
    assert HMSA.from_config(old).get_config() == config


def test_load_model_from_training_dir(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="best.keras"):
        hmsa_keras.load_model(str(tmp_path))
    tiny_model.save(tmp_path / "best.keras")
    loaded = hmsa_keras.load_model(str(tmp_path))
    x = np.zeros((1, 32, 32, 3), "float32")
    np.testing.assert_array_equal(loaded(x)["logits"].numpy(), tiny_model(x)["logits"].numpy())


def test_segment_image_api(tiny_model):
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    out = hmsa_keras.segment_image(tiny_model, image, scales=(0.5, 1.0, 2.0), return_details=True)
    assert out["classes"].shape == (40, 56) and out["probabilities"].shape == (40, 56, 4)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert set(out["attention"]) == {0.5, 1.0, 2.0} and out["attention"][0.5].shape == (40, 56)


def test_freeze_groups(tiny_model):
    model = HMSA(3, **TINY)
    n_all = len(model.trainable_variables)
    model.set_frozen(["trunk"])
    names = [v.path for v in model.trainable_variables]
    assert len(names) < n_all and not any("block_" in n or "Conv1" in n for n in names)
    model.set_frozen(["trunk", "seg_head"])
    assert all("attn_" in v.path for v in model.trainable_variables)
    model.set_frozen([])
    assert len(model.trainable_variables) == n_all
    with pytest.raises(ValueError, match="allowed"):
        model.set_frozen(["decoder"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(trunk="vgg16"), "Unknown trunk 'vgg16'; allowed: mobilenetv2, resnet50, resnet101"),
        (dict(output_stride=32), r"output_stride must be one of \(8, 16\)"),
        (dict(weights="/nonexistent/w.h5"), "does not exist"),
        (dict(fusion="sum"), "fusion must be one of"),
        (dict(train_scales=()), "train_scales: empty scale chain"),
        (dict(train_scales=(0.0, 1.0)), "train_scales: every scale must be a finite number > 0"),
        (dict(train_scales=(0.5, float("inf"))), "finite"),
        (dict(num_classes=256), "at most 255"),
        (dict(attention_head="mlp"), "attention_head must be one of"),
    ],
)
def test_bad_arguments_say_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HMSA(**{"num_classes": 3, **TINY, **kwargs})


def test_wrong_weights_file(tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="Could not load trunk weights from"):
        build_trunk("mobilenetv2", 0.35, 16, weights=str(bad))


def test_bad_inference_scales(tiny_model):
    x = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="empty scale chain"):
        tiny_model.segment(x, scales=())
    with pytest.raises(ValueError, match="> 0"):
        tiny_model.segment(x, scales=(-0.5, 1.0))


def test_build_model_rejects_unknown_option():
    with pytest.raises(ValueError, match="Unknown model option"):
        hmsa_keras.build_model(num_classes=3, colour="red")


def test_too_small_image_names_the_scale(tiny_model):
    with pytest.raises(
        ValueError, match=r"images: image of 24x24 \(HxW\) is 12x12 at scale 0.5.*at least 16"
    ):
        tiny_model.segment(np.zeros((1, 24, 24, 3), "float32"), scales=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        tiny_model.segment(np.zeros((24, 24, 3), "float32"), scales=(1.0,))


def test_keras_compute_loss_contract_equals_the_loss_terms():
    """compute_loss(x, y, model(x, training=True)) (what Keras' fit calls on JAX) is the
    total of compute_loss_terms (what the TensorFlow step uses), and fills the trackers."""
    import keras

    model = HMSA(3, aux_head=True, **TINY)
    model.compile(optimizer=keras.optimizers.SGD(0.01), aux_weight=0.4, scale_loss_weight=0.05)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 32, 48, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 32, 48)).astype("int32")
    y[:, :4] = 255
    y_pred = model(x, training=False)
    assert set(y_pred) == {"logits", "aux_logits", "scale_logits"}
    assert y_pred["scale_logits"]["0.5"].shape == (2, 16, 24, 3)
    total = float(model.compute_loss(x, y, y_pred, training=False))
    want, fused, terms = model.compute_loss_terms(x, y, training=False)
    np.testing.assert_allclose(total, float(want), rtol=1e-6)
    np.testing.assert_allclose(fused.numpy(), y_pred["logits"].numpy(), atol=1e-6)
    manual = terms["fused"] + 0.4 * terms["aux"] + 0.05 * (terms["scale_0.5"] + terms["scale_1"])
    np.testing.assert_allclose(total, float(manual), rtol=1e-6)
    logs = model.compute_metrics(x, y, y_pred)
    np.testing.assert_allclose(float(logs["loss"]), total, rtol=1e-6)
    assert "miou" in logs and 0 <= float(logs["miou"]) <= 1
    with pytest.raises(ValueError, match="sample_weight"):
        model.compute_loss(x, y, y_pred, sample_weight=np.ones(2))
