"""Augmentation keeps image and label aligned, never invents labels, follows the seed."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from hmsa_keras.config import DataConfig
from hmsa_keras.data import augment as aug
from hmsa_keras.data import build_dataset
from hmsa_keras.data.normalization import denormalize

BASE = DataConfig(crop_size=(48, 56), scale_min=0.5, scale_max=2.0, hflip=True, color_jitter=0.0)


def blocky_pair(seed=0, h=64, w=80, block=8, values=tuple(range(8))):
    """Label = class of 8x8 blocks; image red channel = 16 + 32 * class (label is a function
    of the image)."""
    rng = np.random.default_rng(seed)
    cls = rng.choice(np.asarray(values, np.uint8), (h // block, w // block))
    label = np.kron(cls, np.ones((block, block), np.uint8))
    image = rng.integers(0, 256, (h // block, w // block, 3)).astype(np.uint8)
    image = np.kron(image, np.ones((block, block, 1), np.uint8))
    image[..., 0] = 16 + 32 * label
    return image, label


_TRACED = {}


def run(config, image, label, index):
    """Augment one example (one traced function per config); returns (uint8 pixels, labels)."""
    key = repr(config)
    if key not in _TRACED:
        _TRACED[key] = tf.function(
            lambda img, lbl, i: aug.augment(
                img, lbl, tf.stack([tf.constant(config.seed, tf.int64), i]), config
            )
        )
    x, y = _TRACED[key](tf.constant(image), tf.constant(label), tf.constant(index, tf.int64))
    return denormalize(x.numpy()), y.numpy()


def test_image_and_label_stay_aligned():
    image, label = blocky_pair()
    interior_hits, interior_total, hits, total = 0, 0, 0, 0
    for i in range(12):
        x, y = run(BASE, image, label, i)
        decoded = np.clip(np.round((x[..., 0].astype(np.float32) - 16) / 32), 0, 7)
        valid = y != 255
        hits += int((decoded == y)[valid].sum())
        total += int(valid.sum())
        pad = np.pad(y, 1, mode="edge")
        interior = valid.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                interior &= pad[dy : dy + y.shape[0], dx : dx + y.shape[1]] == y
        interior_hits += int((decoded == y)[interior].sum())
        interior_total += int(interior.sum())
    assert total > 0 and interior_total > 0.5 * total
    # Interior pixels decode exactly; block edges (bilinear mixing) mostly. A flip or
    # shift applied to one of the pair only would leave about 1/8 agreement.
    assert interior_hits / interior_total > 0.995
    assert hits / total > 0.8


def test_geometry_is_exact_at_scale_one():
    image, label = blocky_pair(1)
    config = dataclasses.replace(BASE, scale_min=1.0, scale_max=1.0, hflip=False)
    x, y = run(config, image, label, 3)
    # The crop is a window of the original, found where the label matches.
    matches = [
        (r, c)
        for r in range(64 - 48 + 1)
        for c in range(80 - 56 + 1)
        if np.array_equal(label[r : r + 48, c : c + 56], y)
        and np.array_equal(image[r : r + 48, c : c + 56], x)
    ]
    assert matches


def test_padding_uses_ignore_and_mean():
    image, label = blocky_pair(2, h=32, w=32)
    config = dataclasses.replace(BASE, crop_size=(32, 32), scale_min=0.5, scale_max=0.5)
    fn = tf.function(lambda: aug.augment(image, label, tf.constant([0, 5], tf.int64), config))
    x, y = fn()
    pad = y.numpy() == 255
    assert pad.sum() == 32 * 32 - 16 * 16
    assert np.abs(x.numpy()[pad]).max() < 1e-5  # mean colour = 0 after normalisation


def test_never_invents_label_values():
    image, label = blocky_pair(3, values=(0, 3, 7))
    config = dataclasses.replace(
        BASE,
        color_jitter=0.4,
        blur_prob=0.5,
        noise_std=10.0,
        scale_min=0.3,
        scale_max=3.0,
        crop_size=(40, 40),
    )
    seen = set()
    for i in range(16):
        _, y = run(config, image, label, i)
        seen |= set(np.unique(y).tolist())
    assert seen <= {0, 3, 7, 255} and {0, 3, 7} <= seen


def test_photometric_steps_leave_labels_alone():
    image, label = blocky_pair(4)
    plain = run(BASE, image, label, 7)
    for change in (dict(color_jitter=0.3), dict(blur_prob=1.0), dict(noise_std=8.0)):
        x, y = run(dataclasses.replace(BASE, **change), image, label, 7)
        np.testing.assert_array_equal(y, plain[1])
        assert np.abs(x.astype(int) - plain[0].astype(int)).mean() > 0.5, change


def test_augmentation_follows_the_seed():
    image, label = blocky_pair(6)
    config = dataclasses.replace(BASE, color_jitter=0.25, blur_prob=0.5, noise_std=2.0)
    a, b = run(config, image, label, 3), run(config, image, label, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for other in (
        run(dataclasses.replace(config, seed=1), image, label, 3),
        run(config, image, label, 4),
    ):
        assert not np.array_equal(a[0], other[0]) and not np.array_equal(a[1], other[1])


def test_dataset_stream_is_reproducible():
    def first(seed):
        config = DataConfig(
            seed=seed, synthetic_train_size=8, crop_size=(32, 32), blur_prob=0.5, noise_std=2.0
        )
        x, y = next(iter(build_dataset(config, "train", training=True, batch_size=4)))
        return x.numpy(), y.numpy()

    a, b = first(0), first(0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], first(1)[0])


def test_eval_resize_long_edge():
    image, label = blocky_pair(5)
    x, y = aug.resize_long_edge(tf.constant(image), tf.constant(label), 40)
    assert x.shape == (32, 40, 3) and y.shape == (32, 40)
    assert set(np.unique(y.numpy())) <= set(np.unique(label))
    x, y = aug.resize_long_edge(tf.constant(image), tf.constant(label), 100)
    assert y.shape == (64, 80)


# ------------------------------------------------------------ reference recipe features
def _scale_crop(image, label, crop, scale, pre_size=None, seed=(0, 9)):
    x, y, valid = aug.scale_crop(
        tf.constant(image),
        tf.constant(label),
        tf.constant(seed, tf.int64),
        crop,
        (scale, scale),
        pre_size=pre_size,
    )
    return x.numpy(), y.numpy(), valid.numpy()


def test_pre_size_brings_the_long_edge_there_before_the_random_scale():
    image, label = blocky_pair(7)  # 64 x 80: long edge 80
    # pre_size 160 at scale 1 is scale 2 without it: same pixels, same crop window
    for a, b in zip(
        _scale_crop(image, label, (48, 56), 1.0, pre_size=160),
        _scale_crop(image, label, (48, 56), 2.0),
    ):
        np.testing.assert_array_equal(a, b)
    # pre_size 40 then scale 0.5: a 16 x 20 image inside a 48 x 56 crop, the rest padding
    _, y, valid = _scale_crop(image, label, (48, 56), 0.5, pre_size=40)
    assert valid.sum() == 16 * 20 and (y[~valid] == 255).all() and (y[valid] != 255).all()


def test_pre_size_reaches_the_training_stream():
    config = DataConfig(
        synthetic_train_size=4,
        synthetic_image_size=(96, 128),
        crop_size=(64, 64),
        scale_min=1.0,
        scale_max=1.0,
        color_jitter=0.0,
    )
    _, plain = next(iter(build_dataset(config, "train", training=True, batch_size=2)))
    config = dataclasses.replace(config, pre_size=32)
    _, small = next(iter(build_dataset(config, "train", training=True, batch_size=2)))
    assert (plain.numpy() == 255).sum() == 0
    assert ((small.numpy() != 255).sum(axis=(1, 2)) == 24 * 32).all()  # 96x128 -> 24x32


def test_eval_upscale_resizes_to_exactly_the_long_edge():
    image, label = blocky_pair(5)
    x, y = aug.resize_long_edge(tf.constant(image), tf.constant(label), 100, upscale=True)
    assert x.shape == (80, 100, 3) and y.shape == (80, 100)
    assert set(np.unique(y.numpy())) <= set(np.unique(label))
    x, y = aug.resize_long_edge(tf.constant(image), tf.constant(label), 40, upscale=True)
    assert y.shape == (32, 40)
    config = DataConfig(
        dataset="synthetic", synthetic_val_size=2, synthetic_image_size=(48, 64), eval_long_edge=96
    )
    config = dataclasses.replace(config, eval_upscale=True)
    images, labels = next(iter(build_dataset(config, "val", training=False, batch_size=1)))
    assert images.shape[1:3] == (72, 96) and labels.shape[1:3] == (72, 96)


def _numpy_gaussian_blur(image, sigma):
    """The reference's skimage.filters.gaussian: kernel truncated at int(4 sigma + 0.5)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (taps / sigma) ** 2)
    k /= k.sum()
    h, w, _ = image.shape
    rows = sum(k[i] * image[radius + t : h - radius + t] for i, t in enumerate(taps))
    return sum(k[i] * rows[:, radius + t : w - radius + t] for i, t in enumerate(taps)), radius


def test_gaussian_blur_matches_the_reference_filter_inside_the_image():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (40, 48, 3)).astype(np.float32)
    lo, hi = aug.BLUR_SIGMA
    assert (lo, hi) == pytest.approx((0.15, 0.15 + 1.15))  # reference: 0.15 + random() * 1.15
    for sigma in (0.3, 0.8, hi):
        want, r = _numpy_gaussian_blur(image.astype(np.float64), sigma)
        got = aug.gaussian_blur(tf.constant(image), tf.constant(sigma, tf.float32)).numpy()
        np.testing.assert_allclose(got[r:-r, r:-r], want, atol=0.01, err_msg=f"sigma {sigma}")
