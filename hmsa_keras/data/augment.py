"""In-graph, seeded training augmentation (and the evaluation resize).

Every random choice is a stateless op seeded from a per-example seed
``[config.seed, example_counter]``, so an element's augmentation depends only
on the config seed and its position in the stream: reproducible, independent
of parallelism, different for a different seed.

Geometry is computed straight at crop size: a random scale ``s`` (image
bilinear, label nearest; with ``pre_size`` the scale is multiplied by
``pre_size / long edge``, i.e. the image is first brought to that long edge as in
the reference's ``transforms/joint_transforms.py: RandomSizeAndCrop``), a crop
window placed in the scaled image (padding where the window leaves it: image with
the mean colour, i.e. 0 after normalisation, label with ignore 255), then a
horizontal flip. The result
equals "resize the whole image, pad, crop" but costs only the crop's pixels,
whatever the scale. Labels are only ever gathered (nearest), never
interpolated, so no label value is invented.

Photometric steps (pixel space, before normalisation): colour jitter
(brightness, contrast, saturation, hue), Gaussian blur with probability
``blur_prob`` and sigma uniform in [0.15, 1.30] (the reference's
``transforms/transforms.py: RandomGaussianBlur``, applied there to every image when
``--gblur`` is set), additive Gaussian noise ``noise_std`` (0..255 units).
"""

from __future__ import annotations

import tensorflow as tf

from hmsa_keras.data.labels import IGNORE
from hmsa_keras.data.normalization import MEAN, normalize

# Sub-seed salts, one per random decision.
_SCALE, _OFFSET_Y, _OFFSET_X, _FLIP, _BRIGHT, _CONTRAST, _SAT, _HUE, _BLUR, _SIGMA, _NOISE = range(
    11
)


def _sub(seed, salt):
    return tf.random.experimental.stateless_fold_in(seed, salt)


def _uniform(seed, salt, lo, hi):
    return tf.random.stateless_uniform([], _sub(seed, salt), lo, hi, dtype=tf.float32)


def _randint(seed, salt, lo, hi):
    """Uniform integer in [lo, hi] (inclusive), int32 scalars."""
    return tf.random.stateless_uniform([], _sub(seed, salt), lo, hi + 1, dtype=tf.int32)


def _axis_sampling(offset, out_len, scaled_len, src_len):
    """Source indices for one axis of a crop of the scaled image.

    Returns (i0, i1, frac) for bilinear sampling, nearest indices, and a
    validity mask (False where the crop hangs outside the scaled image).
    Half-pixel-centre convention, as tf.image.resize.
    """
    pos = tf.cast(offset + tf.range(out_len), tf.float32)
    valid = (pos >= 0) & (pos < tf.cast(scaled_len, tf.float32))
    ratio = tf.cast(src_len, tf.float32) / tf.cast(scaled_len, tf.float32)
    src = (pos + 0.5) * ratio - 0.5
    src = tf.clip_by_value(src, 0.0, tf.cast(src_len - 1, tf.float32))
    i0 = tf.cast(tf.floor(src), tf.int32)
    i1 = tf.minimum(i0 + 1, src_len - 1)
    frac = src - tf.cast(i0, tf.float32)
    nearest = tf.clip_by_value(tf.cast(tf.floor((pos + 0.5) * ratio), tf.int32), 0, src_len - 1)
    return i0, i1, frac, nearest, valid


def scale_crop(image, label, seed, crop_size, scale_range=(1.0, 1.0), center=None, pre_size=None):
    """Random scale + pad + crop, computed at crop size.

    Args:
      image: uint8/float [H, W, 3] (pixel values).
      label: uint8/int [H, W] training ids.
      seed: int [2] stateless seed.
      crop_size: (height, width) of the output.
      scale_range: (min, max) of the uniform random scale.
      center: optional float [2] (y, x) in source pixels; the crop is centred
        there (kept inside the scaled image where possible) instead of random.
      pre_size: optional int; the random scale is multiplied by ``pre_size / max(H, W)``
        (the reference's training ``--pre_size``: long edge first resized to it).
    Returns:
      (image float32 [ch, cw, 3] pixel values, label int32 [ch, cw], valid bool [ch, cw]).
    """
    ch, cw = int(crop_size[0]), int(crop_size[1])
    shape = tf.shape(label)
    h, w = shape[0], shape[1]
    lo, hi = float(scale_range[0]), float(scale_range[1])
    scale = _uniform(seed, _SCALE, lo, hi) if hi > lo else tf.constant(lo, tf.float32)
    if pre_size:
        scale = scale * (float(pre_size) / tf.cast(tf.maximum(h, w), tf.float32))
    sh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
    sw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
    # Offsets range over every window position; negative / overhanging = padding.
    lo_y, hi_y = tf.minimum(0, sh - ch), tf.maximum(0, sh - ch)
    lo_x, hi_x = tf.minimum(0, sw - cw), tf.maximum(0, sw - cw)
    if center is None:
        oy = _randint(seed, _OFFSET_Y, lo_y, hi_y)
        ox = _randint(seed, _OFFSET_X, lo_x, hi_x)
    else:
        center = tf.cast(center, tf.float32)
        cy = center[0] * tf.cast(sh, tf.float32) / tf.cast(h, tf.float32)
        cx = center[1] * tf.cast(sw, tf.float32) / tf.cast(w, tf.float32)
        oy = tf.clip_by_value(tf.cast(tf.round(cy), tf.int32) - ch // 2, lo_y, hi_y)
        ox = tf.clip_by_value(tf.cast(tf.round(cx), tf.int32) - cw // 2, lo_x, hi_x)

    y0, y1, fy, ny, vy = _axis_sampling(oy, ch, sh, h)
    x0, x1, fx, nx, vx = _axis_sampling(ox, cw, sw, w)

    img = tf.cast(image, tf.float32)
    rows = (
        tf.gather(img, y0, axis=0) * (1.0 - fy)[:, None, None]
        + tf.gather(img, y1, axis=0) * fy[:, None, None]
    )
    out = (
        tf.gather(rows, x0, axis=1) * (1.0 - fx)[None, :, None]
        + tf.gather(rows, x1, axis=1) * fx[None, :, None]
    )
    lbl = tf.gather(tf.gather(tf.cast(label, tf.int32), ny, axis=0), nx, axis=1)
    valid = vy[:, None] & vx[None, :]
    lbl = tf.where(valid, lbl, IGNORE)
    out = tf.ensure_shape(out, [ch, cw, 3])
    return out, tf.ensure_shape(lbl, [ch, cw]), valid


def color_jitter(image, seed, strength):
    """Brightness, contrast, saturation in [1-s, 1+s], hue shift in [-s/2.5, s/2.5].

    ``image`` in pixel units [0, 255]; returns the same range.
    """
    s = float(strength)
    x = image / 255.0
    x = x * _uniform(seed, _BRIGHT, 1.0 - s, 1.0 + s)
    grey = tf.image.rgb_to_grayscale(x)
    x = (x - tf.reduce_mean(grey)) * _uniform(seed, _CONTRAST, 1.0 - s, 1.0 + s) + tf.reduce_mean(
        grey
    )
    grey = tf.image.rgb_to_grayscale(x)
    x = grey + (x - grey) * _uniform(seed, _SAT, 1.0 - s, 1.0 + s)
    x = tf.clip_by_value(x, 0.0, 1.0)
    hue = s / 2.5
    if hue > 0:
        x = tf.image.adjust_hue(x, _uniform(seed, _HUE, -hue, hue))
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


BLUR_SIGMA = (0.15, 1.30)  # reference RandomGaussianBlur: 0.15 + U[0, 1) * 1.15


def gaussian_blur(image, sigma, radius=5):
    """Separable Gaussian blur of [H, W, C] with reflect padding.

    ``radius=5`` is the radius of the reference's ``skimage`` filter (truncated at
    ``int(4 * sigma + 0.5)`` taps) at the largest sigma, 1.30; for a smaller sigma the taps
    skimage drops weigh less than 1e-4 of the centre tap."""
    taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    k = tf.exp(-0.5 * tf.square(taps / sigma))
    k = k / tf.reduce_sum(k)
    c = image.shape[-1]
    x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    kv = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, c, 1])
    kh = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, c, 1])
    x = tf.nn.depthwise_conv2d(x, kv, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], "VALID")
    return x[0]


def augment(image, label, seed, config, center=None, pre_size=None):
    """Full training augmentation of one example.

    Args:
      image: uint8 [H, W, 3]; label: uint8 [H, W] training ids (255 ignore).
      seed: int [2]; config: a DataConfig; center: optional (y, x) for class-uniform crops.
      pre_size: optional long edge the image is brought to before the random scale
        (see :func:`scale_crop`).
    Returns:
      (normalised float32 [ch, cw, 3], int32 [ch, cw]).
    """
    img, lbl, valid = scale_crop(
        image, label, seed, config.crop_size, (config.scale_min, config.scale_max), center, pre_size
    )
    if config.hflip:
        flip = _uniform(seed, _FLIP, 0.0, 1.0) < 0.5
        img = tf.cond(flip, lambda: tf.reverse(img, [1]), lambda: img)
        lbl = tf.cond(flip, lambda: tf.reverse(lbl, [1]), lambda: lbl)
        valid = tf.cond(flip, lambda: tf.reverse(valid, [1]), lambda: valid)
    if config.color_jitter and config.color_jitter > 0:
        img = color_jitter(img, seed, config.color_jitter)
    if config.blur_prob and config.blur_prob > 0:
        sigma = _uniform(seed, _SIGMA, *BLUR_SIGMA)
        do_blur = _uniform(seed, _BLUR, 0.0, 1.0) < config.blur_prob
        img = tf.cond(do_blur, lambda: gaussian_blur(img, sigma), lambda: img)
    if config.noise_std and config.noise_std > 0:
        noise = tf.random.stateless_normal(
            tf.shape(img), _sub(seed, _NOISE), 0.0, float(config.noise_std)
        )
        img = img + noise
    img = tf.clip_by_value(img, 0.0, 255.0)
    # Padding is the mean colour, i.e. exactly 0 after normalisation.
    mean = tf.constant(MEAN, tf.float32) * 255.0
    img = tf.where(valid[..., None], img, mean)
    return normalize(img), lbl


def resize_long_edge(image, label, long_edge, upscale=False):
    """Downscale so that max(H, W) <= long_edge (image bilinear+antialias, label nearest).

    ``upscale=True``: also enlarge smaller images, so every image ends with a long edge of
    exactly ``long_edge`` (the reference's Mapillary evaluation, ``datasets/__init__.py:
    setup_loaders`` with ``transforms/joint_transforms.py: Scale``).
    Returns (float32 image [h', w', 3], label [h', w'] of the input dtype)."""
    shape = tf.shape(label)
    h, w = shape[0], shape[1]
    longest = tf.maximum(h, w)
    needed = tf.not_equal(longest, long_edge) if upscale else longest > long_edge

    def resize():
        ratio = tf.cast(long_edge, tf.float32) / tf.cast(longest, tf.float32)
        size = tf.maximum(
            1, tf.cast(tf.round(tf.cast(tf.stack([h, w]), tf.float32) * ratio), tf.int32)
        )
        img = tf.image.resize(tf.cast(image, tf.float32), size, "bilinear", antialias=True)
        lbl = tf.image.resize(label[..., None], size, "nearest")[..., 0]
        return img, tf.cast(lbl, label.dtype)

    return tf.cond(needed, resize, lambda: (tf.cast(image, tf.float32), label))
