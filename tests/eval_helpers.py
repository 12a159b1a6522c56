"""Fixtures shared by the evaluation / prediction / tiling tests: tiny data on disk and
stub models whose predictions are known exactly."""

import json
import os

import numpy as np
from PIL import Image

STEP = 12  # class c is painted with red = c * STEP


def paint(classes):
    """uint8 RGB image whose red channel encodes ``classes`` (green/blue vary smoothly)."""
    h, w = classes.shape
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = classes.astype(np.int64) * STEP
    img[..., 1] = (np.arange(w)[None, :] * 3 % 256).astype(np.uint8)
    img[..., 2] = (np.arange(h)[:, None] * 5 % 256).astype(np.uint8)
    return img


class ColourCodedModel:
    """Stub with the ``segment`` interface: reads the class painted in the red channel.
    With ``paint`` images its prediction is whatever was painted (no scales involved)."""

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def segment(self, images, scales=(1.0,), flip=False, return_details=False):
        import tensorflow as tf

        from hmsa_keras.data.normalization import MEAN, STD

        red = (images[..., 0] * STD[0] + MEAN[0]) * 255.0
        classes = tf.clip_by_value(tf.cast(tf.round(red / STEP), tf.int32), 0, self.num_classes - 1)
        logits = 10.0 * tf.one_hot(classes, self.num_classes)
        return {"logits": logits, "classes": classes}


def write_folder_dataset(
    root, split="val", sizes=((32, 40), (24, 24), (40, 32)), num_classes=4, seed=0, noise=0.0
):
    """A folder dataset: labels 0..K-1 with 255 blocks; images painted with the labels
    (ignore pixels and a ``noise`` share of pixels painted with a random class).
    Returns the list of (image, label) arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, split, "labels"), exist_ok=True)
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump({"names": [f"c{i}" for i in range(num_classes)], "ignore_label": 255}, f)
    out = []
    for i, (h, w) in enumerate(sizes):
        label = (
            rng.integers(0, num_classes, size=(h // 4, w // 4))
            .repeat(4, 0)
            .repeat(4, 1)
            .astype(np.uint8)
        )
        label[: h // 4, : w // 4] = 255
        painted = np.where(label == 255, rng.integers(0, num_classes, size=label.shape), label)
        wrong = rng.random(label.shape) < noise
        painted = np.where(wrong, rng.integers(0, num_classes, size=label.shape), painted)
        image = paint(painted)
        Image.fromarray(image).save(os.path.join(root, split, "images", f"img{i}.png"))
        Image.fromarray(label, mode="L").save(os.path.join(root, split, "labels", f"img{i}.png"))
        out.append((image, label))
    return out


def write_run_dir(path, model, data_config, eval_scales=(0.5, 1.0)):
    """A training directory as hmsa-train leaves it (best.keras + config.json)."""
    from hmsa_keras.config import ModelConfig, TrainConfig, to_json

    os.makedirs(path, exist_ok=True)
    model.save(os.path.join(path, "best.keras"))
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(
            to_json(
                ModelConfig(num_classes=model.num_classes),
                data_config,
                TrainConfig(model_dir=str(path), eval_scales=tuple(eval_scales)),
            )
        )
    return path
