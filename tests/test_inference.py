"""Tiled inference (hmsa_keras.inference) against whole-image inference.

Exact agreement is only possible for a network whose receptive field fits inside the
tile overlap: the real HMSA trunk has global image pooling (ASPP) and a receptive field
of hundreds of pixels. So: (1) a tile covering the image IS the whole-image call; (2) an
HMSA model whose segmenter is swapped for a small local conv net, run through the real
scale chain + flip + hierarchical fusion, matches whole-image inference with ``crop``
blending and stride-aligned tiles; (3) for the real tiny network we only check sanity.
"""

import numpy as np
import pytest

K = 4


def test_tile_starts_cover_and_align():
    from hmsa_keras.inference import tile_starts, window_1d

    for length, tile, overlap, align in [(100, 32, 8, 1), (128, 64, 48, 4), (97, 40, 10, 8), (30, 64, 16, 1)]:
        starts = tile_starts(length, tile, overlap, align)
        t = min(tile, length)
        assert starts[0] == 0 and starts[-1] == length - t
        assert all(s % align == 0 for s in starts[:-1])
        assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:]))
        for blend in ("crop", "uniform", "gaussian"):
            cover = np.zeros(length)
            for s in starts:
                cover[s:s + t] += window_1d(t, s, length, overlap, blend)
            assert (cover > 0).all(), (length, tile, overlap, blend)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)
    from hmsa_keras.inference import parse_tile_size

    assert parse_tile_size("512x1024") == (512, 1024) and parse_tile_size("256") == (256, 256)
    with pytest.raises(ValueError, match="HxW"):
        parse_tile_size("12xa")


def test_single_tile_is_the_whole_image_call(tiny_model):
    import tensorflow as tf

    from hmsa_keras.inference import segment_tiled

    image = tf.random.stateless_normal([1, 64, 96, 3], seed=[1, 2])
    whole = tiny_model.segment(image, scales=(0.5, 1.0), flip=False, return_details=True)
    tiled = segment_tiled(tiny_model, image, tile_size=(64, 128), overlap=16, scales=(0.5, 1.0),
                          return_details=True)
    assert tiled["num_tiles"] == 1
    np.testing.assert_array_equal(tiled["logits"], whole["logits"][0].numpy())
    np.testing.assert_array_equal(tiled["classes"], whole["classes"][0].numpy())
    np.testing.assert_array_equal(tiled["attention"][0.5], whole["attention"][0.5][0, ..., 0].numpy())


@pytest.fixture(scope="module")
def local_hmsa():
    """An HMSA model whose segmenter is a local conv net (receptive field < 24 px at 0.5x)."""
    import keras

    import hmsa_keras

    model = hmsa_keras.build_model(num_classes=K, alpha=0.35, aspp_channels=8, decoder_channels=8,
                                   attention_channels=8, low_level_channels=8)
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    up = keras.layers.UpSampling2D(2, interpolation="bilinear")
    logits = up(keras.layers.Conv2D(K, 1)(x))
    attention = keras.layers.UpSampling2D(2, interpolation="bilinear")(keras.layers.Conv2D(1, 1)(x))
    model.network = keras.Model(inp, {"logits": logits, "attention_logits": attention})
    return model


@pytest.mark.parametrize("scales, flip", [((0.5, 1.0), True), ((0.5, 1.0, 2.0), False)])
def test_tiled_equals_whole_image_for_a_local_network(local_hmsa, scales, flip):
    import tensorflow as tf

    from hmsa_keras.inference import argmax_agreement, segment_tiled

    image = tf.random.stateless_normal([1, 96, 128, 3], seed=[4, 5])
    whole = local_hmsa.segment(image, scales=scales, flip=flip, return_details=True)
    tiled = segment_tiled(local_hmsa, image, tile_size=(64, 64), overlap=48, scales=scales, flip=flip,
                          blend="crop", align=4, tile_batch=4, return_details=True)
    assert tiled["num_tiles"] == 3 * 5
    np.testing.assert_allclose(tiled["logits"], whole["logits"][0].numpy(), atol=1e-4, rtol=1e-4)
    assert argmax_agreement(tiled["classes"], whole["classes"][0].numpy()) >= 0.999
    np.testing.assert_allclose(tiled["attention"][0.5], whole["attention"][0.5][0, ..., 0].numpy(), atol=1e-4)
    # Smooth blends mix in tile borders (zero padding): close, not exact.
    for blend in ("gaussian", "uniform"):
        other = segment_tiled(local_hmsa, image, tile_size=(64, 64), overlap=48, scales=scales, flip=flip,
                              blend=blend, align=4, tile_batch=4)
        assert argmax_agreement(other["classes"], whole["classes"][0].numpy()) >= 0.95


def test_tiled_real_network_is_sane(tiny_model):
    import tensorflow as tf

    from hmsa_keras.inference import argmax_agreement, segment_tiled

    image = tf.random.stateless_normal([1, 64, 128, 3], seed=[6, 7])
    whole = tiny_model.segment(image, scales=(1.0,))["classes"][0].numpy()
    tiled = segment_tiled(tiny_model, image, tile_size=(64, 64), overlap=32, scales=(1.0,), tile_batch=3)
    assert tiled["num_tiles"] == 3
    assert tiled["logits"].shape == (64, 128, K) and np.isfinite(tiled["logits"]).all()
    print("real tiny network, tiled vs whole argmax agreement:", argmax_agreement(tiled["classes"], whole))
