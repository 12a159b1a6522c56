"""Image normalisation shared by the data pipeline and the exported graphs.

Every dataset yields float32 images normalised as ``(pixel / 255 - MEAN) / STD``
with the ImageNet channel statistics below (RGB order), the convention of the
reference implementation. Exported models take raw uint8 pixels and apply the
same affine map inside their graph.
"""

import numpy as np

from hmsa_keras.conventions import MEAN, STD


def normalize(image):
    """uint8/float RGB in [0, 255] -> normalised float32 (works on tf and numpy)."""
    import tensorflow as tf

    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(MEAN, tf.float32)) / tf.constant(STD, tf.float32)


def denormalize(image):
    """Inverse of :func:`normalize`: normalised float -> uint8 RGB (numpy)."""
    image = np.asarray(image, np.float32) * np.asarray(STD, np.float32) + np.asarray(
        MEAN, np.float32
    )
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
