"""Colourising label maps and attention maps (numpy and TensorFlow versions)."""

from __future__ import annotations

import numpy as np


def palette_array(colors, ignore_color=(0, 0, 0)) -> np.ndarray:
    """[256, 3] uint8 lookup table: class id -> colour, anything else -> ``ignore_color``."""
    table = np.tile(np.asarray(ignore_color, np.uint8), (256, 1))
    table[: len(colors)] = np.asarray(colors, np.uint8)
    return table


def colorize(label_map, colors) -> np.ndarray:
    """[H, W] integer label map -> [H, W, 3] uint8 image in the dataset's colours."""
    return palette_array(colors)[np.clip(np.asarray(label_map), 0, 255).astype(np.int64)]


def overlay(image, colored, alpha=0.5) -> np.ndarray:
    """Blends a colourised label map over an RGB uint8 image."""
    mixed = (1 - alpha) * np.asarray(image, np.float32) + alpha * np.asarray(colored, np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def attention_to_rgb(attention) -> np.ndarray:
    """[H, W] attention in [0, 1] -> [H, W, 3] uint8 heat map (dark blue 0 -> yellow 1)."""
    a = np.clip(np.asarray(attention, np.float32), 0, 1)[..., None]
    low, high = np.array([20, 20, 120], np.float32), np.array([255, 230, 40], np.float32)
    return (low + a * (high - low)).astype(np.uint8)


def tf_colorize(label_map, colors):
    """TensorFlow version of :func:`colorize` for TensorBoard summaries
    ([B, H, W] -> [B, H, W, 3])."""
    import tensorflow as tf

    table = tf.constant(palette_array(colors))
    return tf.gather(table, tf.clip_by_value(tf.cast(label_map, tf.int32), 0, 255))
