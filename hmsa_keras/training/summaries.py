"""TensorBoard: scalars, per-class IoU and images (input, truth, prediction, attention)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from hmsa_keras.data.normalization import denormalize
from hmsa_keras import visualize


class Summaries:
    """Writers for ``logs/train`` and ``logs/val``; a no-op on non-chief workers."""

    def __init__(self, model_dir, info, enabled=True):
        self.info = info
        self.enabled = enabled
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "train"))
            self.val = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "val"))

    def scalars(self, which, values, step):
        if not self.enabled:
            return
        with getattr(self, which).as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def validation(self, logs, metrics, step):
        if not self.enabled:
            return
        with self.val.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("pixel_accuracy", metrics["pixel_accuracy"])
            tf.summary.scalar("mean_class_accuracy", metrics["mean_class_accuracy"])
            for row in metrics["per_class"]:
                if not np.isnan(row["iou"]):
                    tf.summary.scalar(f"iou/{row['name']}", row["iou"])

    def images(self, model, images, labels, step, max_images=2):
        """Input, ground truth, prediction and the 0.5x attention, in the dataset's colours."""
        if not self.enabled:
            return
        images, labels = images[:max_images], labels[:max_images]
        out = model.segment(images, scales=(0.5, 1.0), return_details=True)
        colors = self.info.colors
        panels = {
            "input": denormalize(images.numpy()),
            "ground_truth": visualize.colorize(labels.numpy(), colors),
            "prediction": visualize.colorize(out["classes"].numpy(), colors),
            "attention_0.5x": visualize.attention_to_rgb(out["attention"][0.5].numpy()[..., 0]),
        }
        with self.train.as_default(step=step):
            for name, value in panels.items():
                tf.summary.image(f"images/{name}", value, max_outputs=max_images)
