"""Fusion checked against an independent NumPy implementation of the reference chain."""

import numpy as np
import pytest
import tensorflow as tf

from hmsa_keras.models import fusion as F


def np_resize(x, size):
    """Bilinear, half-pixel centres, no antialias: TensorFlow's resize written in NumPy."""

    def axis_weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo)

    (h0, h1, wh), (w0, w1, ww) = (
        axis_weights(x.shape[1], size[0]),
        axis_weights(x.shape[2], size[1]),
    )
    rows = x[:, h0] * (1 - wh)[None, :, None, None] + x[:, h1] * wh[None, :, None, None]
    return rows[:, :, w0] * (1 - ww)[None, None, :, None] + rows[:, :, w1] * ww[None, None, :, None]


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_chain(outputs):
    """The reference nscale_forward ordering, written independently of fusion.py."""
    scales = sorted(outputs, reverse=True)
    pred = outputs[scales[0]][0]
    for s in scales[1:]:
        logits, attn = outputs[s]  # attention: the probability in [0, 1]
        if s >= 1.0:
            pred = attn * logits + (1 - attn) * np_resize(pred, logits.shape[1:3])
        else:
            size = pred.shape[1:3]
            pred = np_resize(attn * logits, size) + (1 - np_resize(attn, size)) * pred
    return pred


def random_outputs(rng, h, w, scales, k=3):
    out = {}
    for s in scales:
        sh, sw = int(np.floor(h * s)), int(np.floor(w * s))
        out[s] = (
            rng.normal(size=(2, sh, sw, k)).astype("float32"),
            np_sigmoid(rng.normal(size=(2, sh, sw, 1))).astype("float32"),  # attention probability
        )
    return out


def test_numpy_resize_matches_tensorflow():
    x = np.random.default_rng(0).normal(size=(1, 13, 17, 2)).astype("float32")
    for size in [(26, 34), (6, 8), (97, 131)]:
        np.testing.assert_allclose(np_resize(x, size), tf.image.resize(x, size).numpy(), atol=1e-5)


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.0), (0.25, 0.5, 1.0, 2.0), (0.5, 1.0, 1.5)])
def test_hierarchical_chain_matches_numpy_on_odd_sizes(scales):
    outputs = random_outputs(np.random.default_rng(1), 97, 131, scales)
    fused = F.hierarchical(
        {s: (tf.constant(l), tf.constant(a)) for s, (l, a) in outputs.items()}
    ).numpy()
    assert fused.shape == (2, 97, 131, 3)
    np.testing.assert_allclose(fused, np_chain(outputs), atol=1e-4)


def test_training_pair_is_the_paper_equation():
    """L = U(a_0.5 * L_0.5) + (1 - U(a_0.5)) * L_1.0 with attention multiplied before upsampling."""
    rng = np.random.default_rng(2)
    outputs = random_outputs(rng, 33, 47, (0.5, 1.0))
    (l_lo, a), (l_hi, _) = outputs[0.5], outputs[1.0]
    expected = np_resize(a * l_lo, (33, 47)) + (1 - np_resize(a, (33, 47))) * l_hi
    got = F.hierarchical({s: (tf.constant(l), tf.constant(t)) for s, (l, t) in outputs.items()})
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # multiplying after upsampling is a different (wrong) operator: the test can tell them apart
    wrong = np_resize(a, (33, 47)) * np_resize(l_lo, (33, 47)) + (1 - np_resize(a, (33, 47))) * l_hi
    assert np.abs(wrong - expected).max() > 1e-3


def test_lowest_scale_has_final_say_and_largest_attention_unused():
    outputs = random_outputs(np.random.default_rng(3), 20, 24, (0.5, 1.0, 2.0))
    as_tf = lambda o: {s: (tf.constant(l), tf.constant(a)) for s, (l, a) in o.items()}  # noqa: E731
    base = F.hierarchical(as_tf(outputs)).numpy()
    changed = dict(outputs)
    changed[2.0] = (outputs[2.0][0], 1.0 - outputs[2.0][1])  # largest scale's attention
    np.testing.assert_allclose(F.hierarchical(as_tf(changed)).numpy(), base, atol=1e-6)
    saturated = dict(outputs)
    saturated[0.5] = (outputs[0.5][0], np.ones_like(outputs[0.5][1]))  # a_0.5 = 1
    np.testing.assert_allclose(
        F.hierarchical(as_tf(saturated)).numpy(), np_resize(outputs[0.5][0], (20, 24)), atol=1e-4
    )


def test_explicit_mean_max_baselines():
    outputs = random_outputs(np.random.default_rng(4), 17, 23, (0.5, 1.0, 2.0))
    as_tf = {s: (tf.constant(l), tf.constant(a)) for s, (l, a) in outputs.items()}
    size = (17, 23)
    up = {s: (np_resize(l, size), np_resize(a, size)) for s, (l, a) in outputs.items()}
    logits = np.stack([up[s][0] for s in sorted(up)])
    probs = np.clip(np.stack([up[s][1] for s in sorted(up)]), 1e-6, 1 - 1e-6)
    scores = np.log(probs / (1 - probs))  # the attention heads' scores before their sigmoid
    w = np.exp(scores) / np.exp(scores).sum(0, keepdims=True)
    np.testing.assert_allclose(
        F.fuse(as_tf, "explicit", size).numpy(), (w * logits).sum(0), atol=1e-4
    )
    np.testing.assert_allclose(F.fuse(as_tf, "mean", size).numpy(), logits.mean(0), atol=1e-4)
    np.testing.assert_allclose(F.fuse(as_tf, "max", size).numpy(), logits.max(0), atol=1e-4)


def test_scaled_size_is_floor():
    x = tf.zeros([1, 97, 131, 3])
    assert tuple(F.scaled_size(x, 0.5).numpy()) == (48, 65)
    assert tuple(F.scaled_size(x, 0.25).numpy()) == (24, 32)
    assert tuple(F.scaled_size(x, 2.0).numpy()) == (194, 262)


@pytest.mark.parametrize(
    "scales,flip",
    [
        ((1.0,), False),
        ((0.5, 1.0), True),
        ((0.25, 0.5, 1.0, 2.0), False),
        ((0.25, 0.5, 1.0, 2.0), True),
    ],
)
def test_model_segment_matches_numpy_chain(tiny_model, scales, flip):
    """End to end: image resized by floor(H*s) in NumPy, the network as a black box, the
    chain in NumPy."""
    rng = np.random.default_rng(5)
    image = rng.normal(size=(1, 97, 131, 3)).astype("float32")

    def np_segment(img):
        outs = {}
        for s in scales:
            size = (int(np.floor(97 * s)), int(np.floor(131 * s)))
            x = img if s == 1.0 else np_resize(img, size).astype("float32")
            o = tiny_model.network(x)
            outs[s] = (o["logits"].numpy(), o["attention"].numpy())
        return np_resize(np_chain(outs), (97, 131))

    expected = np_segment(image)
    if flip:
        expected = 0.5 * (expected + np_segment(image[:, :, ::-1].copy())[:, :, ::-1])
    got = tiny_model.segment(image, scales=scales, flip=flip)
    np.testing.assert_allclose(got["logits"].numpy(), expected, atol=2e-3)
    np.testing.assert_array_equal(got["classes"].numpy(), np.argmax(got["logits"].numpy(), -1))


def test_segment_details_and_training_call(tiny_model):
    image = np.random.default_rng(6).normal(size=(2, 64, 80, 3)).astype("float32")
    out = tiny_model.segment(image, scales=(0.5, 1.0, 2.0), return_details=True)
    assert set(out["attention"]) == {0.5, 1.0, 2.0}
    for a in out["attention"].values():
        assert (
            a.shape == (2, 64, 80, 1)
            and float(tf.reduce_min(a)) >= 0
            and float(tf.reduce_max(a)) <= 1
        )
    # the training call is the 0.5/1.0 hierarchical fusion
    np.testing.assert_allclose(
        tiny_model(image)["logits"].numpy(),
        tiny_model.segment(image, scales=(0.5, 1.0))["logits"].numpy(),
        atol=1e-5,
    )


def test_segment_chains_runs_each_scale_of_the_union_once(tiny_model, monkeypatch):
    """Three chains with flip: one run_scales call per orientation over the union of the
    chains, and each chain's result equals its own segment() call."""
    image = np.random.default_rng(7).normal(size=(1, 64, 80, 3)).astype("float32")
    chains = [(1.0,), (0.5, 1.0), (0.5, 1.0, 2.0)]
    singles = [tiny_model.segment(image, scales=c, flip=True, return_details=True) for c in chains]
    calls = []
    run_scales = tiny_model.run_scales

    def spy(images, scales, *args, **kwargs):
        calls.append(tuple(scales))
        return run_scales(images, scales, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "run_scales", spy)
    results = tiny_model.segment_chains(image, chains, flip=True, return_details=True)
    assert calls == [(0.5, 1.0, 2.0), (0.5, 1.0, 2.0)]
    for chain, got, want in zip(chains, results, singles):
        np.testing.assert_allclose(got["logits"].numpy(), want["logits"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(got["classes"].numpy(), want["classes"].numpy())
        assert set(got["attention"]) == set(chain) == set(got["scale_logits"])
    with pytest.raises(ValueError, match="list of scale chains"):
        tiny_model.segment_chains(image, [])
    with pytest.raises(ValueError, match="fusion must be one of"):
        tiny_model.segment_chains(image, [(1.0,)], fusion="sum")
