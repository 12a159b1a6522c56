"""Parity and speed of exported models against the Keras model they come from.

For every artefact: file size, argmax agreement with ``HMSA.segment`` (same chain, same
flip) on validation images, and the median latency at a stated size on this CPU
(ai_edge_litert Interpreter for TFLite, TensorFlow for the SavedModel).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np


def dir_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def sample_images(data_cfg, split, count, training):
    """``count`` uint8 RGB images ``[H, W, 3]`` from the pipeline (training: augmented
    crops of the training split, as the model saw them; else full validation images)."""
    from hmsa_keras.data import build_dataset
    from hmsa_keras.data.normalization import denormalize

    if count <= 0:
        return []
    dataset = build_dataset(data_cfg, split, training=training, batch_size=1)
    images = []
    for image, _ in dataset.take(count):
        images.append(denormalize(image[0].numpy()))
    if len(images) < count and training:
        raise ValueError(f"split {split!r} gave only {len(images)} of {count} images")
    return images


def resize_image(image, size):
    """PIL bilinear resize to ``size`` = (h, w) (what the LiteRT runner does for fixed-size models)."""
    from PIL import Image

    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def keras_classes(model, images, scales, flip):
    """Reference class maps from the Keras model (one image at a time: sizes may differ)."""
    from hmsa_keras.data.normalization import normalize

    return [model.segment(normalize(img[None]), scales=scales, flip=flip)["classes"][0].numpy()
            for img in images]


def agreement(predictions, references):
    same = sum(int(np.sum(p == r)) for p, r in zip(predictions, references))
    total = sum(r.size for r in references)
    return same / max(total, 1)


def check_tflite(path, images, references, latency_size=None, runs=5, threads=2):
    """{'agreement', 'latency_s', 'latency_size'} of a .tflite file (LiteRT, ``threads``)."""
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    segmenter = LiteRTSegmenter(path, num_threads=threads)
    predictions = [segmenter.segment(img)["classes"] for img in images]
    result = {"agreement": agreement(predictions, references)}
    if latency_size:
        median, _ = segmenter.benchmark(latency_size, runs=runs)
        size = segmenter.fixed_size or latency_size
        result.update(latency_s=median, latency_size=f"{size[0]}x{size[1]}")
    return result


def check_saved_model(path, images, references, latency_size=None, runs=5):
    """Same as :func:`check_tflite` for the SavedModel's ``serving_default`` (TensorFlow)."""
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    predictions = [fn(images=tf.constant(img[None]))["classes"][0].numpy() for img in images]
    result = {"agreement": agreement(predictions, references)}
    if latency_size:
        h, w = latency_size
        x = tf.constant(np.random.RandomState(0).randint(0, 256, (1, h, w, 3)).astype(np.uint8))
        fn(images=x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(images=x)["classes"].numpy()
            times.append(time.perf_counter() - start)
        result.update(latency_s=statistics.median(times), latency_size=f"{h}x{w}")
    return result


def format_table(rows):
    """Plain-text table of report rows."""
    lines = [f"{'artefact':<34} {'size':>9} {'agreement':>10} {'latency':>16}"]
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.2f} MB"
        agree = f"{100 * r['agreement']:.2f}%" if r.get("agreement") is not None else "-"
        lat = f"{1000 * r['latency_s']:.0f} ms @{r['latency_size']}" if r.get("latency_s") is not None else "-"
        lines.append(f"{r['file']:<34} {size:>9} {agree:>10} {lat:>16}")
    return "\n".join(lines)
