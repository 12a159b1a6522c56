"""Training engine pieces that run in-process: the fused loss, the optimizer, the LR schedule,
freezing, and the documented Python workflow."""

import os

import numpy as np
import pytest

from tests.conftest import TINY


# ---------------------------------------------------------------------------- reference maths
def _bilinear(x, size):
    """NumPy bilinear resize with half-pixel centres (TF / PyTorch align_corners=False), NHWC."""

    def axis_weights(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    (ylo, yhi, wy), (xlo, xhi, wx) = (
        axis_weights(x.shape[1], size[0]),
        axis_weights(x.shape[2], size[1]),
    )
    rows = x[:, ylo] * (1 - wy)[None, :, None, None] + x[:, yhi] * wy[None, :, None, None]
    return (
        rows[:, :, xlo] * (1 - wx)[None, None, :, None] + rows[:, :, xhi] * wx[None, None, :, None]
    )


def _ce(labels, logits):
    """Mean softmax cross-entropy over pixels whose label is in [0, K)."""
    k = logits.shape[-1]
    valid = (labels >= 0) & (labels < k)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return float(nll[valid].sum() / valid.sum())


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def aux_model():
    import hmsa_keras

    model = hmsa_keras.build_model(num_classes=3, aux_head=True, **TINY)
    model.compile(optimizer="sgd", aux_weight=0.4, scale_loss_weight=0.05)
    return model


def test_fused_loss_matches_hand_computed_value(aux_model, monkeypatch):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    b, h, w, k = 2, 8, 12, 3
    low = {
        n: rng.standard_normal((b, h // 2, w // 2, c)).astype(np.float32)
        for n, c in (("logits", k), ("attn", 1), ("aux", k))
    }
    high = {
        n: rng.standard_normal((b, h, w, c)).astype(np.float32)
        for n, c in (("logits", k), ("attn", 1), ("aux", k))
    }
    labels = rng.integers(0, k, (b, h, w)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.25] = 255

    def run_scales(images, scales, training=False, attention=None):
        assert tuple(scales) == (0.5, 1.0)
        # the segmenter's attention output is a probability (sigmoid before resizing)
        return {
            s: (tf.constant(o["logits"]), tf.constant(_sigmoid(o["attn"])), tf.constant(o["aux"]))
            for s, o in ((0.5, low), (1.0, high))
        }

    monkeypatch.setattr(aux_model, "run_scales", run_scales)
    total, fused, terms = aux_model.compute_loss_terms(tf.zeros((b, h, w, 3)), tf.constant(labels))

    a = _sigmoid(low["attn"])
    up_a = _bilinear(a, (h, w))
    want_fused = _bilinear(a * low["logits"], (h, w)) + (1 - up_a) * high["logits"]
    want_aux = _bilinear(a * low["aux"], (h, w)) + (1 - up_a) * high["aux"]
    want = {
        "fused": _ce(labels, want_fused),
        "aux": _ce(labels, want_aux),
        "scale_0.5": _ce(labels, _bilinear(low["logits"], (h, w))),
        "scale_1": _ce(labels, high["logits"]),
    }
    np.testing.assert_allclose(fused.numpy(), want_fused, rtol=1e-5, atol=1e-5)
    assert set(terms) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)
    scale_sum = want["scale_0.5"] + want["scale_1"]
    expected_total = want["fused"] + 0.4 * want["aux"] + 0.05 * scale_sum
    np.testing.assert_allclose(float(total), expected_total, rtol=1e-5)


@pytest.fixture(scope="module")
def three_scale_model():
    import hmsa_keras

    model = hmsa_keras.build_model(
        num_classes=3, aux_head=True, train_scales=(0.5, 1.0, 2.0), **TINY
    )
    model.compile(optimizer="sgd", aux_weight=0.4, scale_loss_weight=0.05)
    return model


def test_three_scale_fused_loss_matches_hand_computed_chain(three_scale_model, monkeypatch):
    """Training at 0.5, 1.0, 2.0 (hierarchical): the chain of reference ``nscale_forward``,
    largest scale first, computed here with NumPy from the same per-scale outputs:

        p = a_1 L_1 + (1 - a_1) D(L_2)            (D: down to the 1.0x size)
        p = U(a_0.5 L_0.5) + (1 - U(a_0.5)) p     (U: up to the 1.0x size)

    the 2.0x attention is unused; aux logits follow the same chain with the same attention."""
    import tensorflow as tf

    rng = np.random.default_rng(11)
    b, h, w, k = 2, 8, 12, 3
    sizes = {0.5: (h // 2, w // 2), 1.0: (h, w), 2.0: (2 * h, 2 * w)}
    outs = {
        s: {
            n: rng.standard_normal((b, *hw, c)).astype(np.float32)
            for n, c in (("logits", k), ("attn", 1), ("aux", k))
        }
        for s, hw in sizes.items()
    }
    for s in outs:  # the segmenter's attention output is a probability
        outs[s]["attn"] = _sigmoid(outs[s]["attn"])
    labels = rng.integers(0, k, (b, h, w)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.25] = 255
    seen = {}

    def run_scales(images, scales, training=False, attention=None):
        seen["scales"], seen["attention"] = tuple(scales), attention
        return {
            s: tuple(tf.constant(outs[s][n]) for n in ("logits", "attn", "aux")) for s in scales
        }

    monkeypatch.setattr(three_scale_model, "run_scales", run_scales)
    total, fused, terms = three_scale_model.compute_loss_terms(
        tf.zeros((b, h, w, 3)), tf.constant(labels)
    )
    assert seen["scales"] == (0.5, 1.0, 2.0)
    # the head runs at every training scale for its BatchNorm statistics (attention_bn
    # "all_scales", the reference's way); the fusion reads 0.5 and 1.0 only
    assert seen["attention"] is None or tuple(seen["attention"]) == (0.5, 1.0, 2.0)

    def chain(name):
        a1, a05 = outs[1.0]["attn"], outs[0.5]["attn"]  # the segmenter's attention: sigmoid
        p = a1 * outs[1.0][name] + (1 - a1) * _bilinear(outs[2.0][name], (h, w))
        return _bilinear(a05 * outs[0.5][name], (h, w)) + (1 - _bilinear(a05, (h, w))) * p

    want_fused, want_aux = chain("logits"), chain("aux")
    want = {"fused": _ce(labels, want_fused), "aux": _ce(labels, want_aux)}
    for s, key in ((0.5, "scale_0.5"), (1.0, "scale_1"), (2.0, "scale_2")):
        want[key] = _ce(labels, _bilinear(outs[s]["logits"], (h, w)))
    np.testing.assert_allclose(fused.numpy(), want_fused, rtol=1e-5, atol=1e-5)
    assert set(terms) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)
    scale_sum = want["scale_0.5"] + want["scale_1"] + want["scale_2"]
    np.testing.assert_allclose(
        float(total), want["fused"] + 0.4 * want["aux"] + 0.05 * scale_sum, rtol=1e-5
    )


# ---------------------------------------------------------------------------- optimizer
def _small_model():
    import keras

    inner = keras.Sequential([keras.layers.Dense(2, name="inner_dense")], name="inner")
    x = inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_bias")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw_nobias")(x)
    x = inner(x)
    return keras.Model(inp, x)


def test_weight_decay_skips_batchnorm_and_biases():
    import tensorflow as tf

    from hmsa_keras.training.optimizer import build_optimizer, no_decay_variables

    model = _small_model()
    for v in model.weights:
        v.assign(np.ones(v.shape, np.float32))
    lr, wd = 0.5, 0.1
    opt = build_optimizer(model, lr, total_steps=10, weight_decay=wd)
    variables = model.trainable_variables
    # zero gradient: only decay moves w
    opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    excluded = {v.path for v in no_decay_variables(model)}
    assert excluded == {"conv_bias/bias", "bn/gamma", "bn/beta", "inner/inner_dense/bias"}
    for v in variables:
        want = 1.0 if v.path in excluded else 1.0 - lr * wd
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-6, err_msg=v.path)


def test_no_decay_covers_every_bn_and_bias_of_hmsa(tiny_model):
    from hmsa_keras.training.optimizer import no_decay_variables

    want = {
        v.path
        for v in tiny_model.trainable_variables
        if v.path.rsplit("/", 1)[-1] in ("gamma", "beta", "bias")
    }
    got = [v.path for v in no_decay_variables(tiny_model)]
    assert len(got) == len(set(got)) and set(got) == want
    assert any("trunk" in p or "Conv1" in p or "_BN/" in p for p in got)  # nested trunk reached


@pytest.mark.parametrize("power, warmup", [(1.0, 0), (2.0, 10), (0.9, 3)])
def test_warmup_poly_decay_matches_formula(power, warmup):
    import keras

    from hmsa_keras.training.optimizer import WarmupPolyDecay

    base, total = 0.1, 100
    schedule = WarmupPolyDecay(base, total, power=power, warmup_steps=warmup)

    def formula(t):
        if t < warmup:
            return base * (t + 1) / warmup
        return base * max(1.0 - (t - warmup) / (total - warmup), 0.0) ** power

    for t in (0, 1, 2, 5, 9, 10, 11, 50, 99, 100, 150):
        np.testing.assert_allclose(
            float(schedule(t)), formula(t), rtol=1e-5, atol=1e-9, err_msg=f"step {t}"
        )
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, WarmupPolyDecay) and again.get_config() == schedule.get_config()


def test_set_frozen_groups(tiny_model):
    from hmsa_keras.models.hmsa import FREEZE_GROUPS

    everything = len(tiny_model.trainable_variables)
    try:
        tiny_model.set_frozen(["trunk"])
        paths = [v.path for v in tiny_model.trainable_variables]
        assert 0 < len(paths) < everything
        assert not any(p.startswith("trunk") or "/trunk/" in p for p in paths)
        tiny_model.set_frozen(["trunk", "seg_head"])
        heads = [v.path for v in tiny_model.trainable_variables]
        assert heads and all(
            p.rsplit("/", 2)[-2].startswith(FREEZE_GROUPS["attention"]) for p in heads
        ), heads
        with pytest.raises(ValueError, match="backbone"):
            tiny_model.set_frozen(["backbone"])
    finally:
        tiny_model.set_frozen([])
    assert len(tiny_model.trainable_variables) == everything


# ---------------------------------------------------------------------------- documented workflow
def _doc_snippet(section):
    """The first ```python block of a section of docs/training.md."""
    import re

    from tests.conftest import REPO

    text = (REPO / "docs" / "training.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


@pytest.mark.slow
def test_documented_python_workflow_runs(tmp_path, capsys):
    """docs/training.md "Python training workflow", executed as written except its settings
    block (tiny synthetic data and model): fit with EarlyStopping / ModelCheckpoint /
    CSVLogger / TensorBoard, evaluate three chains, export, reload."""
    import csv

    code = _doc_snippet("Python training workflow")
    start, end = "# --- settings", "# --- end of settings ---"
    assert start in code and end in code, "the settings markers moved: update this test"
    head, rest = code.split(start, 1)
    tiny = (
        f"RUN = {str(tmp_path / 'run')!r}\n"
        "DATA = hmsa_keras.DataConfig(dataset='synthetic', synthetic_train_size=8,\n"
        "                             synthetic_val_size=2, synthetic_image_size=(64, 64),\n"
        "                             crop_size=(48, 48))\n"
        f"MODEL = dict({', '.join(f'{k}={v!r}' for k, v in TINY.items())})\n"
        "BATCH, EPOCHS, STEPS_PER_EPOCH = 2, 2, 2\n"
    )
    namespace = {}
    exec(compile(head + tiny + rest.split(end, 1)[1], "docs/training.md", "exec"), namespace)
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(0.0 <= float(r["val_miou"]) <= 1.0 and float(r["loss"]) > 0 for r in rows)
    assert (run / "best.keras").is_file() and (run / "saved_model" / "saved_model.pb").is_file()
    assert os.listdir(run / "logs" / "validation")
    printed = capsys.readouterr().out
    for chain in ("1", "0.5,1", "0.5,1,2"):
        assert f"{chain}: mIoU " in printed or f"chain {chain}" in printed, printed[-2000:]
    results = namespace["results"]
    assert [tuple(r.scales) for r in results] == [(1.0,), (0.5, 1.0), (0.5, 1.0, 2.0)]
    assert namespace["model"].num_classes == namespace["info"].num_classes
