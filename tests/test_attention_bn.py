"""Where the attention head runs in training (``attention_bn``): at every training scale as in
the reference (``network/mscale.py: two_scale_forward`` runs ``_fwd``, attention included, at
0.5x then 1.0x), or only where the fusion reads it; and never with single-scale training."""

import numpy as np
import pytest

from tests.conftest import TINY

ATTENTION_BN_LAYERS = ("attn_1_bn", "attn_2_bn")


def _model(**kwargs):
    import keras

    import hmsa_keras

    keras.utils.set_random_seed(0)
    model = hmsa_keras.build_model(num_classes=3, **TINY, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="ce")  # LR 0: only BN statistics move
    return model


def _batch():
    import tensorflow as tf

    images = tf.random.stateless_normal((2, 64, 64, 3), seed=(1, 1))
    labels = tf.random.stateless_uniform((2, 64, 64), seed=(2, 2), maxval=3, dtype=tf.int32)
    return images, labels


def _stats(model, names):
    return {
        n: [
            v.numpy().copy()
            for v in (
                model.network.get_layer(n).moving_mean,
                model.network.get_layer(n).moving_variance,
            )
        ]
        for n in names
    }


def _by_hand(model, images, scales):
    """The segmenter run at ``scales`` in training mode, in order (what BatchNorm sees)."""
    from hmsa_keras.models import fusion as F

    for s in scales:
        x = images if s == 1.0 else F.resize(images, F.scaled_size(images, s))
        model.network(x, training=True)


@pytest.mark.parametrize(
    "attention_bn, seen", [("all_scales", (0.5, 1.0)), ("fused_scales", (0.5,))]
)
def test_attention_statistics_follow_the_scales_it_runs_at(attention_bn, seen):
    """After one training step the attention head's moving statistics equal those of the
    segmenter run by hand at ``seen`` (0.5x then 1.0x for the reference's way, 0.5x only
    otherwise), and differ from the other option's."""

    images, labels = _batch()
    other_option = "fused_scales" if attention_bn == "all_scales" else "all_scales"
    model, twin, other = (
        _model(attention_bn=attention_bn),
        _model(attention_bn=attention_bn),
        _model(attention_bn=other_option),
    )
    initial = model.get_weights()
    twin.set_weights(initial)
    other.set_weights(initial)
    before = _stats(model, ATTENTION_BN_LAYERS)
    model.train_step((images, labels))  # eagerly: faster than tracing here
    other.train_step((images, labels))
    _by_hand(twin, images, seen)
    after, want = _stats(model, ATTENTION_BN_LAYERS), _stats(twin, ATTENTION_BN_LAYERS)
    for name in ATTENTION_BN_LAYERS:
        for got, expected, old in zip(after[name], want[name], before[name]):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
            assert not np.allclose(got, old), name  # they moved
    assert not np.allclose(
        _stats(other, ATTENTION_BN_LAYERS)["attn_1_bn"][0], after["attn_1_bn"][0]
    )


def test_unread_attention_takes_no_gradient():
    """Running the head at 1.0x for its statistics changes no gradient: the two options give
    the same loss and the same gradients for every weight on the same batch."""
    import tensorflow as tf

    images, labels = _batch()
    grads = {}
    for option in ("all_scales", "fused_scales"):
        model = _model(attention_bn=option)
        with tf.GradientTape() as tape:
            total, _, _ = model.compute_loss_terms(images, labels)
        grads[option] = (
            float(total),
            tape.gradient(total, model.trainable_weights),
            [w.path for w in model.trainable_weights],
        )
    (loss_a, g_a, names), (loss_b, g_b, _) = grads["all_scales"], grads["fused_scales"]
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    attention_grads = 0
    for name, a, b in zip(names, g_a, g_b):
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
            attention_grads += "attn_" in name
    assert attention_grads > 0  # the 0.5x attention is trained


@pytest.mark.parametrize(
    "fusion, scales, moved", [("single", (1.0,), False), ("hierarchical", (0.5, 1.0), True)]
)
def test_single_scale_training_never_runs_the_attention_head(fusion, scales, moved):
    """Single-scale training leaves the attention statistics put; run_scales marks the scales
    whose attention was not computed with None; the view without the head adds no weights."""

    from hmsa_keras.models import fusion as F

    model = _model(fusion=fusion, train_scales=scales)
    images, labels = _batch()
    attn_bn, seg_bn = model.network.get_layer("attn_1_bn"), model.network.get_layer("seg_1_bn")
    before = attn_bn.moving_mean.numpy().copy(), seg_bn.moving_mean.numpy().copy()
    model.train_step((images, labels))  # eagerly: faster than tracing here
    assert not np.allclose(seg_bn.moving_mean.numpy(), before[1])
    assert np.allclose(attn_bn.moving_mean.numpy(), before[0]) != moved

    outputs = model.run_scales(images, scales, attention=F.attention_scales(fusion, scales))
    assert [s for s, o in outputs.items() if o[1] is not None] == list(
        F.attention_scales(fusion, scales)
    )
    assert F.attention_scales("explicit", (0.5, 1.0, 2.0)) == (0.5, 1.0, 2.0)
    assert len(model.weights) == len({id(w) for w in model.weights})
