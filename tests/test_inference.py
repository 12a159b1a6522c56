"""The inference entry point (hmsa_keras.inference.segment_image), tiled and not, against
whole-image inference.

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

    for length, tile, overlap, align in [
        (100, 32, 8, 1),
        (128, 64, 48, 4),
        (97, 40, 10, 8),
        (30, 64, 16, 1),
    ]:
        starts = tile_starts(length, tile, overlap, align)
        t = min(tile, length)
        assert starts[0] == 0 and starts[-1] == length - t
        assert all(s % align == 0 for s in starts[:-1])
        assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:]))
        for blend in ("crop", "uniform", "gaussian"):
            cover = np.zeros(length)
            for s in starts:
                cover[s : s + t] += window_1d(t, s, length, overlap, blend)
            assert (cover > 0).all(), (length, tile, overlap, blend)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _whole(model, image, scales, flip=False):
    """model.segment on the normalised image, the independent reference."""
    from hmsa_keras.inference import normalize

    return model.segment(normalize(image)[None], scales=scales, flip=flip, return_details=True)


def test_single_tile_is_the_whole_image_call(tiny_model):
    from hmsa_keras.inference import segment_image

    image = _image(64, 96, 1)
    whole = _whole(tiny_model, image, (0.5, 1.0))
    untiled = segment_image(tiny_model, image, scales=(0.5, 1.0), return_details=True)
    tiled = segment_image(
        tiny_model,
        image,
        scales=(0.5, 1.0),
        return_details=True,
        tile_size=(64, 128),
        tile_overlap=16,
    )
    assert tiled["num_tiles"] == untiled["num_tiles"] == 1
    assert (
        sorted(tiled)
        == sorted(untiled)
        == ["attention", "classes", "logits", "num_tiles", "probabilities", "scale_logits"]
    )
    for out in (tiled, untiled):
        np.testing.assert_allclose(out["logits"], whole["logits"][0].numpy(), atol=1e-5)
        np.testing.assert_array_equal(out["classes"], whole["classes"][0].numpy())
        np.testing.assert_allclose(
            out["attention"][0.5], whole["attention"][0.5][0, ..., 0].numpy(), atol=1e-6
        )
        np.testing.assert_allclose(
            out["scale_logits"][1.0], whole["scale_logits"][1.0][0].numpy(), atol=1e-5
        )
        e = np.exp(out["logits"] - out["logits"].max(-1, keepdims=True))
        np.testing.assert_allclose(out["probabilities"], e / e.sum(-1, keepdims=True), atol=1e-6)


@pytest.fixture(scope="module")
def local_hmsa():
    """An HMSA model whose segmenter is a local conv net (receptive field < 24 px at 0.5x)."""
    import keras

    import hmsa_keras

    model = hmsa_keras.build_model(
        num_classes=K,
        alpha=0.35,
        aspp_channels=8,
        decoder_channels=8,
        attention_channels=8,
        low_level_channels=8,
    )
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    # back to the input size with a stride-2 transposed convolution (even sizes only; Keras'
    # bilinear UpSampling2D cannot run in a tf.function with dynamic sizes)
    logits = keras.layers.Conv2DTranspose(K, 2, strides=2)(x)
    attention = keras.layers.Conv2DTranspose(1, 2, strides=2, activation="sigmoid")(x)
    model.network = keras.Model(inp, {"logits": logits, "attention": attention})
    return model


@pytest.mark.parametrize("scales, flip", [((0.5, 1.0), True), ((0.5, 1.0, 2.0), False)])
def test_tiled_equals_whole_image_for_a_local_network(local_hmsa, scales, flip):
    from hmsa_keras.inference import argmax_agreement, segment_image

    image = _image(96, 128, 4)
    whole = _whole(local_hmsa, image, scales, flip)
    tiled = segment_image(
        local_hmsa,
        image,
        scales,
        flip,
        return_details=True,
        tile_size=(64, 64),
        tile_overlap=48,
        tile_blend="crop",
        tile_align=4,
        tile_batch=4,
    )
    assert tiled["num_tiles"] == 3 * 5
    np.testing.assert_allclose(tiled["logits"], whole["logits"][0].numpy(), atol=1e-4, rtol=1e-4)
    assert argmax_agreement(tiled["classes"], whole["classes"][0].numpy()) >= 0.999
    np.testing.assert_allclose(
        tiled["attention"][0.5], whole["attention"][0.5][0, ..., 0].numpy(), atol=1e-4
    )
    for s in scales:
        np.testing.assert_allclose(
            tiled["scale_logits"][s], whole["scale_logits"][s][0].numpy(), atol=1e-4
        )
    # Smooth blends mix in tile borders (zero padding): close, not exact.
    for blend in ("gaussian", "uniform"):
        other = segment_image(
            local_hmsa,
            image,
            scales,
            flip,
            tile_size=(64, 64),
            tile_overlap=48,
            tile_blend=blend,
            tile_align=4,
            tile_batch=4,
        )
        assert argmax_agreement(other["classes"], whole["classes"][0].numpy()) >= 0.95


def test_tiled_real_network_is_sane(tiny_model):
    from hmsa_keras.inference import argmax_agreement, segment_image

    image = _image(64, 128, 6)
    whole = _whole(tiny_model, image, (1.0,))["classes"][0].numpy()
    tiled = segment_image(
        tiny_model, image, (1.0,), tile_size=(64, 64), tile_overlap=32, tile_batch=3
    )
    assert tiled["num_tiles"] == 3
    assert tiled["logits"].shape == (64, 128, K) and np.isfinite(tiled["logits"]).all()
    print(
        "real tiny network, tiled vs whole argmax agreement:",
        argmax_agreement(tiled["classes"], whole),
    )
