"""Parity, accuracy and speed of exported models against the Keras model they come from.

For every artefact (:func:`hmsa_keras.export.export_model` writes the rows):

- ``agreement``: share of pixels whose class equals ``HMSA.segment``'s (same chain, same
  flip) on the validation images at their own size, and ``agreement_deploy`` on the same
  images resized to the deployment size (the latency size), and ``agreement_calibration``
  at the calibration size when that is a third size;
- ``miou``: mIoU on the validation images against their labels (the confusion matrix and
  :func:`hmsa_keras.metrics.compute_metrics` of ``hmsa-eval``), next to the Keras model's;
- ``latency_s``: median latency at the deployment size on this CPU (ai_edge_litert
  ``Interpreter`` with XNNPACK for TFLite, TensorFlow for the SavedModel).

:func:`float_fallback_sweep` is the per-op analysis of ``full_int8``: every op type of the
quantized file in turn is kept in float (selective quantization) and the agreement and
latency are measured again.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from hmsa_keras.conventions import IGNORE_LABEL


def dir_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def sample_pairs(data_cfg, split, count, training):
    """``count`` (uint8 RGB image ``[H, W, 3]``, uint8 label ``[H, W]``) pairs from the
    pipeline (training: augmented crops, as the model saw them; else full images)."""
    from hmsa_keras.data import build_dataset
    from hmsa_keras.data.normalization import denormalize

    if count <= 0:
        return [], []
    dataset = build_dataset(data_cfg, split, training=training, batch_size=1)
    images, labels = [], []
    for image, label in dataset.take(count):
        images.append(denormalize(image[0].numpy()))
        lab = label[0].numpy()
        labels.append((lab[..., 0] if lab.ndim == 3 else lab).astype(np.uint8))
    if len(images) < count and training:
        raise ValueError(f"split {split!r} gave only {len(images)} of {count} images")
    return images, labels


def sample_images(data_cfg, split, count, training):
    """Images only (see :func:`sample_pairs`)."""
    return sample_pairs(data_cfg, split, count, training)[0]


def resize_image(image, size):
    """PIL bilinear resize to ``size`` = (h, w) (what the LiteRT runner does for fixed-size
    models)."""
    from PIL import Image

    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def keras_classes(model, images, scales, flip):
    """Reference class maps from the Keras model (one image at a time: sizes may differ;
    :func:`hmsa_keras.inference.compiled_segment`, one trace per size)."""
    from hmsa_keras.inference import compiled_segment, normalize

    fn = compiled_segment(model, scales, flip)
    return [np.asarray(fn(normalize(img[None]))["classes"][0]) for img in images]


def agreement(predictions, references):
    same = sum(int(np.sum(p == r)) for p, r in zip(predictions, references))
    total = sum(r.size for r in references)
    return same / max(total, 1)


def miou(predictions, labels, num_classes, class_names=None):
    """``(mIoU, metrics dict)`` of class maps against labels (ignore label skipped)."""
    from hmsa_keras.metrics import compute_metrics

    cm = np.zeros((num_classes, num_classes), np.int64)
    for p, y in zip(predictions, labels):
        y = np.asarray(y).reshape(-1).astype(np.int64)
        p = np.asarray(p).reshape(-1).astype(np.int64)
        keep = (y >= 0) & (y < num_classes) & (y != IGNORE_LABEL)
        cm += np.bincount(y[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    metrics = compute_metrics(cm, class_names)
    return metrics["miou"], metrics


class EvalSet:
    """Validation images and the Keras model's answers on them, at the sizes the report
    uses: ``"val"`` (own size, with labels), ``"deploy"`` (resized to the latency size) and
    ``"calibration"`` (resized to the calibration size), the last two only when they are
    other images than the ones before."""

    def __init__(
        self,
        model,
        images,
        labels,
        scales,
        flip,
        deploy_size=None,
        calibration_size=None,
        num_classes=None,
        class_names=None,
    ):
        self.sets = {}
        self.labels = list(labels) if labels is not None else None
        self.num_classes = num_classes or int(model.num_classes)
        self.class_names = class_names
        images = list(images)
        if not images:
            return
        self.sets["val"] = (images, keras_classes(model, images, scales, flip))
        for key, size in (("deploy", deploy_size), ("calibration", calibration_size)):
            if not size or all(tuple(i.shape[:2]) == tuple(size) for i in images):
                continue
            if "x".join(map(str, size)) in self.sizes().values():  # already measured there
                continue
            resized = [resize_image(i, size) for i in images]
            self.sets[key] = (resized, keras_classes(model, resized, scales, flip))

    def sizes(self):
        """{set: "HxW" (the first image's)}."""
        return {k: "x".join(map(str, v[0][0].shape[:2])) for k, v in self.sets.items()}

    def keras_row(self):
        if self.labels is None or "val" not in self.sets:
            return {}
        value, _ = miou(self.sets["val"][1], self.labels, self.num_classes, self.class_names)
        return {"miou": value}

    def measure(self, segment):
        """``{agreement, agreement_deploy, agreement_calibration, miou}`` of a function
        ``uint8 [H, W, 3] -> int32 [H, W]``."""
        out = {}
        for key, (images, refs) in self.sets.items():
            preds = [segment(img) for img in images]
            out["agreement" if key == "val" else f"agreement_{key}"] = agreement(preds, refs)
            if key == "val" and self.labels is not None:
                out["miou"] = miou(preds, self.labels, self.num_classes, self.class_names)[0]
        return out


def check_tflite(path, eval_set, latency_size=None, runs=5, threads=2):
    """Agreement/mIoU (:meth:`EvalSet.measure`) and median LiteRT latency of a .tflite file."""
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    segmenter = LiteRTSegmenter(path, num_threads=threads)
    result = eval_set.measure(lambda img: segmenter.segment(img)["classes"])
    if latency_size:
        median, _ = segmenter.benchmark(latency_size, runs=runs)
        size = segmenter.fixed_size or latency_size
        result.update(latency_s=median, latency_size=f"{size[0]}x{size[1]}")
    return result


def check_saved_model(path, eval_set, latency_size=None, runs=5):
    """Same as :func:`check_tflite` for the SavedModel's ``serving_default`` (TensorFlow)."""
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    result = eval_set.measure(lambda img: fn(images=tf.constant(img[None]))["classes"][0].numpy())
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


def _pct(value):
    return f"{100 * value:.2f}%" if value is not None else "-"


def format_table(rows, sizes=None):
    """Plain-text table of report rows (``sizes``: {set: "HxW"} for the column titles)."""
    sizes = sizes or {}
    cols = [("agreement", f"agree@{sizes.get('val', 'val')}")]
    if "deploy" in sizes:
        cols.append(("agreement_deploy", f"agree@{sizes['deploy']}"))
    if "calibration" in sizes:
        cols.append(("agreement_calibration", f"agree@{sizes['calibration']}"))
    header = (
        f"{'artefact':<38} {'size':>9}"
        + "".join(f" {t:>16}" for _, t in cols)
        + f" {'mIoU':>7} {'latency':>18}"
    )
    lines = [header]
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.2f} MB" if r.get("size_bytes") is not None else "-"
        lat = (
            f"{1000 * r['latency_s']:.0f} ms @{r['latency_size']}"
            if r.get("latency_s") is not None
            else "-"
        )
        miou_text = f"{100 * r['miou']:.2f}" if r.get("miou") is not None else "-"
        lines.append(
            f"{r['file']:<38} {size:>9}"
            + "".join(f" {_pct(r.get(k)):>16}" for k, _ in cols)
            + f" {miou_text:>7} {lat:>18}"
        )
    return "\n".join(lines)


def float_fallback_sweep(
    module,
    calibration_images,
    eval_set,
    latency_size,
    candidates=None,
    runs=3,
    threads=2,
    outputs=("classes", "probabilities"),
    echo=print,
    workdir=None,
):
    """Per-op float fallback of ``full_int8``: for the plain file and for each op type in
    ``candidates`` (default: every op type of the plain file that is quantized), convert
    with that type kept in float and measure agreement and latency. Returns rows
    ``{float_ops, agreement..., latency_s, ops}``."""
    import tempfile

    from hmsa_keras.export import tflite

    workdir = workdir or tempfile.mkdtemp(prefix="hmsa_int8_sweep_")
    rows = []
    quantizer = tflite.Int8Quantizer(module, calibration_images, outputs=outputs)  # calibrated once

    def run(float_ops):
        content = quantizer.quantize(float_ops=float_ops)
        path = os.path.join(workdir, "sweep_" + ("_".join(float_ops) or "none") + ".tflite")
        with open(path, "wb") as f:
            f.write(content)
        row = {
            "float_ops": list(float_ops),
            **check_tflite(path, eval_set, latency_size, runs, threads),
        }
        row["size_bytes"] = len(content)
        row["file"] = "+".join(float_ops) or "(all int8)"
        rows.append(row)
        echo(format_table([row], eval_set.sizes()).splitlines()[1])
        return content

    echo(format_table([], eval_set.sizes()))
    plain = run(())
    if candidates is None:
        skip = {
            "QUANTIZE",
            "DEQUANTIZE",
            "ARG_MAX",
            "SHAPE",
            "STRIDED_SLICE",
            "PACK",
            "CAST",
            "FLOOR",
            "MUL_INT",
        }
        candidates = sorted(set(tflite.operator_codes(plain)) - skip)
    for op in candidates:
        try:
            run((op,))
        except Exception as exc:  # an op the debugger cannot keep in float: say so, go on
            echo(f"{op:<38} failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:100]}")
    return rows


def interleaved_latency(paths, size, runs=5, threads=2, warmup=1, seed=0):
    """``{path: median seconds}`` of LiteRT ``invoke`` at ``size`` = (h, w) for several
    ``.tflite`` files, timed in interleaved rounds (one invoke of each file per round), so
    that the ratios between files are fair on a machine whose load changes."""
    from hmsa_keras.export.litert_runner import LiteRTSegmenter

    segmenters = {p: LiteRTSegmenter(p, num_threads=threads) for p in paths}
    image = np.random.RandomState(seed).randint(0, 256, (*size, 3)).astype(np.uint8)
    for seg in segmenters.values():
        h, w = seg.fixed_size or size
        x = image if (h, w) == tuple(size) else resize_image(image, (h, w))
        seg._prepare(h, w)
        seg.interpreter.set_tensor(seg.input["index"], seg._feed(x))
        for _ in range(warmup):
            seg.interpreter.invoke()
    times = {p: [] for p in paths}
    for _ in range(runs):
        for p, seg in segmenters.items():
            start = time.perf_counter()
            seg.interpreter.invoke()
            times[p].append(time.perf_counter() - start)
    return {p: statistics.median(t) for p, t in times.items()}
