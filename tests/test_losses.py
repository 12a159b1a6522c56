"""Tests for hmsa_keras.losses against independent NumPy (float64) computations."""

import numpy as np
import pytest
import tensorflow as tf

from hmsa_keras import losses

IGN = 255


def _random_case(rng, b, h, w, k, ignore_frac=0.15, scale=2.0):
    labels = rng.integers(0, k, size=(b, h, w)).astype(np.int32)
    labels[rng.random((b, h, w)) < ignore_frac] = IGN
    logits = (rng.standard_normal((b, h, w, k)) * scale).astype(np.float32)
    return labels, logits


# ----------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------


def np_cross_entropy(labels, logits, class_weights=None):
    k = logits.shape[-1]
    x = logits.astype(np.float64).reshape(-1, k)
    y = labels.reshape(-1)
    valid = (y >= 0) & (y < k)
    x, y = x[valid], y[valid]
    m = x.max(axis=1, keepdims=True)
    logz = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    nll = logz - x[np.arange(len(y)), y]
    w = np.ones(len(y)) if class_weights is None else np.asarray(class_weights, np.float64)[y]
    return (w * nll).sum(), w.sum()


def np_avg_pool(x, s):
    """x [H, W]; zero pad s//2, kernel s, stride s, pad counted in the mean."""
    p = s // 2
    xp = np.zeros((x.shape[0] + 2 * p, x.shape[1] + 2 * p))
    xp[p : p + x.shape[0], p : p + x.shape[1]] = x
    oh = (xp.shape[0] - s) // s + 1
    ow = (xp.shape[1] - s) // s + 1
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[i, j] = xp[i * s : i * s + s, j * s : j * s + s].sum() / (s * s)
    return out


def np_rmi_term(y, p, radius, eps=5e-4):
    """One class, one sample: 0.5 * logdet(cond. covariance + eps I) / D."""
    h, w = y.shape
    nh, nw = h - radius + 1, w - radius + 1
    ys, ps = [], []
    for i in range(nh):
        for j in range(nw):
            ys.append(y[i : i + radius, j : j + radius].reshape(-1))
            ps.append(p[i : i + radius, j : j + radius].reshape(-1))
    Y = np.array(ys).T  # [D, N]
    P = np.array(ps).T
    Y = Y - Y.mean(axis=1, keepdims=True)
    P = P - P.mean(axis=1, keepdims=True)
    d = radius * radius
    syy, spp, syp = Y @ Y.T, P @ P.T, Y @ P.T
    cond = syy - syp @ np.linalg.inv(spp + eps * np.eye(d)) @ syp.T
    sign, logdet = np.linalg.slogdet(cond + eps * np.eye(d))
    assert sign > 0
    return 0.5 * logdet / d


def np_rmi_loss(labels, logits, radius=3, stride=4, lambda_way=1, bce_w=0.5, rmi_w=0.5):
    b, h, w, k = logits.shape
    x = logits.astype(np.float64)
    valid = (labels >= 0) & (labels < k)
    mask = valid.astype(np.float64)
    onehot = np.zeros((b, h, w, k))
    for c in range(k):
        onehot[..., c] = (labels == c) & valid
    # sigmoid BCE, stable form
    bce = np.maximum(x, 0) - x * onehot + np.log1p(np.exp(-np.abs(x)))
    bce_loss = (bce * mask[..., None]).sum() / (mask.sum() + 1.0)
    probs = 1.0 / (1.0 + np.exp(-x)) * mask[..., None] + 1e-6
    rmi = 0.0
    for c in range(k):
        per_sample = []
        for i in range(b):
            yp = np_avg_pool(onehot[i, :, :, c], stride)
            pp = np_avg_pool(probs[i, :, :, c], stride)
            per_sample.append(np_rmi_term(yp, pp, radius))
        rmi += np.mean(per_sample)
    if lambda_way:
        return bce_w * bce_loss + rmi_w * rmi
    return bce_loss + rmi_w * rmi


# ----------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------


def test_cross_entropy_matches_numpy_with_ignore():
    rng = np.random.default_rng(0)
    labels, logits = _random_case(rng, 2, 6, 7, 4)
    labels[0, 0, :3] = -1  # negative labels are ignored too
    s, w = losses.cross_entropy(labels, logits)
    ref_s, ref_w = np_cross_entropy(labels, logits)
    assert float(w) == ref_w
    np.testing.assert_allclose(float(s), ref_s, rtol=1e-5)


def test_cross_entropy_class_weights_pytorch_semantics():
    rng = np.random.default_rng(1)
    labels, logits = _random_case(rng, 2, 5, 5, 3)
    cw = [0.5, 2.0, 1.25]
    s, w = losses.cross_entropy(labels, logits, class_weights=cw)
    ref_s, ref_w = np_cross_entropy(labels, logits, cw)
    np.testing.assert_allclose(float(w), ref_w, rtol=1e-6)
    np.testing.assert_allclose(float(s) / float(w), ref_s / ref_w, rtol=1e-5)


def test_cross_entropy_half_precision_logits_and_all_ignore():
    rng = np.random.default_rng(2)
    labels, logits = _random_case(rng, 1, 4, 4, 3)
    s16, w16 = losses.cross_entropy(labels, tf.constant(logits, tf.float16))
    assert s16.dtype == tf.float32
    ref_s, _ = np_cross_entropy(labels, logits.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(float(s16), ref_s, rtol=1e-4)
    s, w = losses.cross_entropy(np.full((1, 4, 4), IGN), logits)
    assert float(s) == 0.0 and float(w) == 0.0
    assert float(losses.reduce_loss(s, w)) == 0.0


def test_cross_entropy_accepts_nhw1_labels():
    rng = np.random.default_rng(3)
    labels, logits = _random_case(rng, 2, 4, 4, 3)
    a = losses.cross_entropy(labels[..., None], logits)
    b = losses.cross_entropy(labels, logits)
    np.testing.assert_allclose([float(a[0]), float(a[1])], [float(b[0]), float(b[1])])


# ----------------------------------------------------------------------------------------
# RMI
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (2, 13, 17, 3)])
def test_rmi_matches_numpy(shape):
    rng = np.random.default_rng(4)
    b, h, w, k = shape
    labels, logits = _random_case(rng, b, h, w, k)
    s, wt = losses.rmi_loss(labels, logits)
    assert float(wt) == b
    ref = np_rmi_loss(labels, logits)
    np.testing.assert_allclose(float(s) / float(wt), ref, rtol=2e-5, atol=2e-5)


def test_rmi_lambda_way_zero_and_weights():
    rng = np.random.default_rng(5)
    labels, logits = _random_case(rng, 1, 12, 12, 2)
    s, wt = losses.rmi_loss(labels, logits, lambda_way=0, rmi_weight=0.3)
    ref = np_rmi_loss(labels, logits, lambda_way=0, rmi_w=0.3)
    np.testing.assert_allclose(float(s) / float(wt), ref, rtol=2e-5, atol=2e-5)


def test_rmi_half_precision_logits():
    rng = np.random.default_rng(6)
    labels, logits = _random_case(rng, 1, 16, 16, 3)
    l16 = logits.astype(np.float16)
    s, wt = losses.rmi_loss(labels, tf.constant(l16))
    assert s.dtype == tf.float32
    ref = np_rmi_loss(labels, l16.astype(np.float32))
    np.testing.assert_allclose(float(s) / float(wt), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["ce", "rmi"])
def test_gradients_finite(name):
    rng = np.random.default_rng(7)
    labels, logits = _random_case(rng, 2, 16, 16, 3)
    x = tf.Variable(logits)
    fn = losses.get_loss(name)
    with tf.GradientTape() as tape:
        s, w = fn(labels, x)
        loss = losses.reduce_loss(s, w)
    g = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(g))
    assert np.abs(g).sum() > 0
    # ignored pixels get no gradient from CE
    if name == "ce":
        assert np.all(g[labels == IGN] == 0)


@pytest.mark.parametrize("name", ["ce", "rmi"])
def test_good_prediction_beats_wrong_one(name):
    rng = np.random.default_rng(8)
    k = 3
    # blocky labels, so that the pooled RMI statistics are non-trivial
    base = rng.integers(0, k, size=(2, 4, 4))
    labels = np.kron(base, np.ones((1, 4, 4), dtype=np.int64)).astype(np.int32)
    labels[:, :2, :2] = IGN
    onehot = np.eye(k, dtype=np.float32)[np.where(labels == IGN, 0, labels)]
    good = 6.0 * (2.0 * onehot - 1.0)
    wrong = np.roll(good, 1, axis=-1)  # every pixel predicts another class
    fn = losses.get_loss(name)
    lg = float(losses.reduce_loss(*fn(labels, good)))
    lw = float(losses.reduce_loss(*fn(labels, wrong)))
    assert np.isfinite(lg) and np.isfinite(lw)
    assert lg < lw
    if name == "rmi":  # the RMI term alone must prefer the good prediction too
        rmi_only = losses.get_loss("rmi", bce_weight=0.0, rmi_weight=1.0)
        assert float(losses.reduce_loss(*rmi_only(labels, good))) < float(
            losses.reduce_loss(*rmi_only(labels, wrong))
        )


def test_rmi_under_tf_function_dynamic_shape():
    rng = np.random.default_rng(9)
    labels, logits = _random_case(rng, 1, 16, 20, 3)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int32),
            tf.TensorSpec([None, None, None, 3], tf.float32),
        ]
    )
    def f(y, x):
        return losses.rmi_loss(y, x)

    s, w = f(labels, logits)
    s2, w2 = losses.rmi_loss(labels, logits)
    np.testing.assert_allclose(float(s), float(s2), rtol=1e-6)


def test_get_loss_errors_and_kwargs():
    with pytest.raises(ValueError, match="allowed"):
        losses.get_loss("dice")
    fn = losses.get_loss("CE", class_weights=[1.0, 3.0])
    labels = np.array([[[0, 1]]], np.int32)
    logits = np.zeros((1, 1, 2, 2), np.float32)
    s, w = fn(labels, logits)
    assert float(w) == 4.0
    np.testing.assert_allclose(float(s), 4.0 * np.log(2.0), rtol=1e-6)
    with pytest.raises(ValueError):
        losses.cross_entropy(labels, logits, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        losses.rmi_loss(
            np.zeros((1, 8, 8), np.int32), np.zeros((1, 8, 8, 2), np.float32), num_classes=3
        )
