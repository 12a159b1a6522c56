"""Segmentation metrics: confusion matrix, (m)IoU and friends.

Conventions: the confusion matrix ``cm[K, K]`` has rows = ground truth, columns =
prediction, accumulated over a whole split; pixels whose ground truth is outside ``[0, K)``
are skipped (the same rule as :mod:`hmsa_keras.losses`; the data pipeline labels void pixels
:data:`hmsa_keras.conventions.IGNORE_LABEL`, which is outside ``[0, K)``).
``IoU_c = TP / (TP + FP + FN)``; classes with ``TP + FP + FN == 0`` get NaN and are
excluded from the mean (``mIoU = nanmean``), as the reference's ``utils/misc.py: fast_hist``
and ``calculate_iou`` do.

The tensor side (:func:`confusion_matrix`, :class:`ConfusionMatrixMetric`) is ``keras.ops``
and runs on any Keras backend; the NumPy side writes reports.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Optional, Sequence

import keras
import numpy as np
from keras import ops

from hmsa_keras.backend import float64_available
from hmsa_keras.conventions import IGNORE_LABEL

__all__ = [
    "IGNORE_LABEL",
    "confusion_matrix",
    "ConfusionMatrixMetric",
    "iou_from_matrix",
    "compute_metrics",
    "format_table",
    "format_sweep",
    "write_metrics",
    "write_results",
]

# The JAX-without-float64 metric keeps each count as high * 2**_SPLIT + low in two int32
# variables: exact up to 2**51 pixels per cell, as long as one update adds < 2**31 - 2**20.
_SPLIT = 20


# ----------------------------------------------------------------------------------------
# Tensor side (keras.ops)
# ----------------------------------------------------------------------------------------


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _to_class_map(y_pred):
    """Logits/probabilities ``[B, H, W, K]`` -> argmax ``[B, H, W]``; class maps pass."""
    from hmsa_keras.models.fusion import argmax_classes

    y_pred = ops.convert_to_tensor(y_pred)
    floating = "float" in _dtype(y_pred)
    if len(y_pred.shape) == 4:
        if y_pred.shape[-1] == 1 and not floating:
            return ops.cast(ops.squeeze(y_pred, -1), "int32")
        return argmax_classes(y_pred)
    if floating:
        y_pred = ops.round(y_pred)
    return ops.cast(y_pred, "int32")


def _to_label_map(y_true):
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, axis=-1)
    if "float" in _dtype(y_true):
        y_true = ops.round(y_true)
    return ops.cast(y_true, "int32")


def _count_dtype():
    return "int64" if float64_available() else "int32"


def confusion_matrix(labels, preds, num_classes: int, sample_weight=None, dtype=None):
    """Confusion matrix ``[K, K]`` (rows = ground truth, columns = prediction).

    ``labels``: int ``[B, H, W]`` (or ``[B, H, W, 1]``); ``preds``: class map ``[B, H, W]``
    or logits ``[B, H, W, K]`` (argmax is taken). Pixels with a ground truth outside
    ``[0, K)`` are skipped, as are (defensively) pixels with a prediction outside
    ``[0, K)``, which an argmax never produces. ``sample_weight`` (optional, ``[B]`` or
    broadcastable to ``[B, H, W]``) weights each pixel's count; pass a float ``dtype`` then.
    Uses ``segment_sum`` (XLA-friendly). Returns ``dtype``: by default int64 (int32 on
    JAX without ``jax_enable_x64``, where int64 does not exist).
    """
    dtype = keras.backend.standardize_dtype(dtype or _count_dtype())
    k = int(num_classes)
    label_map = _to_label_map(labels)
    labels = ops.reshape(label_map, (-1,))
    preds = ops.reshape(_to_class_map(preds), (-1,))
    valid = (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
    ids = ops.where(valid, labels * k + preds, ops.zeros_like(labels))
    if sample_weight is None:
        counts = ops.cast(valid, dtype)
    else:
        w = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
        if len(w.shape) == 4:
            w = ops.squeeze(w, axis=-1)
        elif len(w.shape) == 1:  # one weight per image
            w = w[:, None, None]
        w = ops.broadcast_to(w, ops.shape(label_map))
        counts = ops.reshape(w, (-1,)) * ops.cast(valid, dtype)
    cm = ops.segment_sum(counts, ids, num_segments=k * k)
    return ops.reshape(cm, (k, k))


def iou_from_matrix(cm):
    """Per-class IoU ``[K]`` from a confusion matrix; NaN where undefined. float64 (float32
    on JAX without ``jax_enable_x64``)."""
    cm = ops.cast(ops.convert_to_tensor(cm), "float64" if float64_available() else "float32")
    tp = ops.diagonal(cm)
    union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
    safe = ops.where(union > 0, union, ops.ones_like(union))
    return ops.where(union > 0, tp / safe, ops.full_like(union, float("nan")))


@keras.saving.register_keras_serializable(package="hmsa_keras")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Streaming confusion matrix whose ``result()`` is the mIoU.

    ``update_state(y_true, y_pred, sample_weight=None)``: ``y_true`` int ``[B, H, W]``
    (or ``[B, H, W, 1]``), ``y_pred`` logits ``[B, H, W, K]`` or an int class map
    ``[B, H, W]``. The matrix is kept in a float64 variable (exact counts up to 2**53
    pixels) created with ``aggregation="sum"``: under a ``tf.distribute`` strategy each
    replica accumulates its own pixels and a read in cross-replica context
    (``metric.result()`` / ``metric.matrix()`` called outside ``strategy.run``) returns the
    SUM over replicas, i.e. the exact global matrix. On JAX without ``jax_enable_x64`` (no
    float64) it is two int32 variables, ``high * 2**20 + low`` (exact up to 2**51 pixels;
    a ``sample_weight`` is rounded to whole pixels there).

    ``result()``: mIoU = nanmean over classes with ``TP + FP + FN > 0``; 0.0 when the
    matrix is empty (no class present yet).
    """

    def __init__(self, num_classes: int, name: str = "miou", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self.num_classes = int(num_classes)
        self._exact64 = float64_available()
        shape = (self.num_classes, self.num_classes)
        self.total_cm = self.add_variable(
            shape=shape,
            initializer="zeros",
            dtype="float64" if self._exact64 else "int32",
            aggregation="sum",
            name="total_confusion_matrix",
        )
        if not self._exact64:
            self.total_cm_high = self.add_variable(
                shape=shape,
                initializer="zeros",
                dtype="int32",
                aggregation="sum",
                name="total_confusion_matrix_high",
            )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self._exact64:
            cm = confusion_matrix(
                y_true, y_pred, self.num_classes, sample_weight=sample_weight, dtype="float64"
            )
            self.total_cm.assign_add(cm)
            return
        if sample_weight is not None:
            sample_weight = ops.round(ops.cast(sample_weight, "float32"))
        cm = confusion_matrix(
            y_true, y_pred, self.num_classes, sample_weight=sample_weight, dtype="int32"
        )
        low = self.total_cm + cm
        self.total_cm_high.assign_add(ops.right_shift(low, _SPLIT))
        self.total_cm.assign(ops.bitwise_and(low, (1 << _SPLIT) - 1))

    def matrix(self):
        """The accumulated ``[K, K]`` matrix (rows = ground truth): a float64 tensor; on
        JAX without float64 a NumPy float64 array (read eagerly)."""
        if self._exact64:
            return ops.convert_to_tensor(self.total_cm)
        high = np.asarray(ops.convert_to_numpy(self.total_cm_high), np.float64)
        low = np.asarray(ops.convert_to_numpy(self.total_cm), np.float64)
        return high * float(1 << _SPLIT) + low

    def _matrix_tensor(self):
        if self._exact64:
            return ops.convert_to_tensor(self.total_cm)
        return ops.cast(self.total_cm_high, "float32") * float(1 << _SPLIT) + ops.cast(
            self.total_cm, "float32"
        )

    def per_class_iou(self):
        return iou_from_matrix(self._matrix_tensor())

    def result(self):
        iou = self.per_class_iou()
        present = ops.logical_not(ops.isnan(iou))
        n = ops.sum(ops.cast(present, iou.dtype))
        total = ops.sum(ops.where(present, iou, ops.zeros_like(iou)))
        return ops.cast(ops.divide_no_nan(total, n), self.dtype)

    def reset_state(self):
        for v in self.variables:
            v.assign(ops.zeros(v.shape, v.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config


# ----------------------------------------------------------------------------------------
# NumPy side (reports)
# ----------------------------------------------------------------------------------------


def _div(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)
    return out


def _nanmean(x):
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def compute_metrics(cm, class_names: Optional[Sequence[str]] = None) -> dict:
    """Summary and per-class metrics from a confusion matrix (rows = ground truth).

    Returns a dict with ``miou``, ``pixel_accuracy``, ``mean_class_accuracy``, ``fw_iou``,
    ``num_classes``, ``total_pixels``, ``classes_present`` (classes with TP+FP+FN > 0) and
    ``per_class``: a list of dicts ``name, iou, tp_share, fp_share, fn_share, precision,
    recall, gt_pixels, pred_pixels``. ``*_share`` are TP, FP, FN as fractions of the union
    TP+FP+FN (so ``tp_share == iou`` and the three sum to 1). Undefined values are NaN
    (e.g. recall of a class absent from the ground truth); the means skip NaNs.
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    k = cm.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    fp = pred - tp
    fn = gt - tp
    union = tp + fp + fn
    total = cm.sum()
    iou = _div(tp, union)
    recall = _div(tp, gt)
    precision = _div(tp, pred)
    freq = gt / total if total > 0 else np.zeros(k)
    valid_fw = gt > 0
    fw_iou = (
        float(np.sum(freq[valid_fw] * np.nan_to_num(iou[valid_fw]))) if total > 0 else float("nan")
    )
    per_class = []
    for c in range(k):
        per_class.append(
            {
                "name": str(class_names[c]),
                "iou": float(iou[c]),
                "tp_share": float(_div(tp[c], union[c])),
                "fp_share": float(_div(fp[c], union[c])),
                "fn_share": float(_div(fn[c], union[c])),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "gt_pixels": int(round(gt[c])),
                "pred_pixels": int(round(pred[c])),
            }
        )
    return {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_class_accuracy": _nanmean(recall),
        "fw_iou": fw_iou,
        "num_classes": int(k),
        "total_pixels": int(round(total)),
        "classes_present": int(np.sum(union > 0)),
        "per_class": per_class,
    }


def _fmt(x, pct=True, width=8):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'-':>{width}}"
    return f"{100.0 * x:>{width}.2f}" if pct else f"{x:>{width}}"


def format_table(metrics: dict) -> str:
    """Printable per-class table (percentages) followed by the summary lines."""
    rows = metrics.get("per_class", [])
    name_w = max([len("class")] + [len(r["name"]) for r in rows])
    cols = ["IoU", "TP", "FP", "FN", "Prec", "Recall"]
    header = (
        f"{'id':>3}  {'class':<{name_w}}" + "".join(f"{c:>8}" for c in cols) + f"{'gt_pixels':>14}"
    )
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows):
        lines.append(
            f"{i:>3}  {r['name']:<{name_w}}"
            + _fmt(r["iou"])
            + _fmt(r["tp_share"])
            + _fmt(r["fp_share"])
            + _fmt(r["fn_share"])
            + _fmt(r["precision"])
            + _fmt(r["recall"])
            + f"{r['gt_pixels']:>14d}"
        )
    lines.append("-" * len(header))
    for key, label in [
        ("miou", "mIoU"),
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_class_accuracy", "mean class accuracy"),
        ("fw_iou", "frequency-weighted IoU"),
    ]:
        if key in metrics:
            lines.append(f"{label:<24}{_fmt(metrics[key]).strip()}")
    lines.append("(TP/FP/FN as % of TP+FP+FN; '-' = undefined, excluded from means)")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def write_metrics(metrics: dict, json_path=None, csv_path=None):
    """Write the metrics dict as JSON (NaN -> null) and the per-class table as CSV.

    Either path may be None to skip it. Parent directories are created. The CSV has one
    row per class (``id`` + the per-class keys; NaN as an empty cell) followed by
    ``summary`` rows for miou, pixel_accuracy, mean_class_accuracy and fw_iou.
    """
    if json_path:
        d = os.path.dirname(os.fspath(json_path))
        if d:
            os.makedirs(d, exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(_json_safe(metrics), f, indent=2, allow_nan=False)
    if csv_path:
        d = os.path.dirname(os.fspath(csv_path))
        if d:
            os.makedirs(d, exist_ok=True)
        fields = [
            "id",
            "name",
            "iou",
            "tp_share",
            "fp_share",
            "fn_share",
            "precision",
            "recall",
            "gt_pixels",
            "pred_pixels",
        ]

        def cell(v):
            if isinstance(v, float) and math.isnan(v):
                return ""
            return v

        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for i, r in enumerate(metrics.get("per_class", [])):
                w.writerow([i] + [cell(r.get(k, "")) for k in fields[1:]])
            for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou"):
                if key in metrics:
                    w.writerow(["summary", key, cell(metrics[key])] + [""] * (len(fields) - 3))


# ----------------------------------------------------------------------------------------
# Reports of several scale chains (hmsa-eval)
# ----------------------------------------------------------------------------------------


def format_sweep(results) -> str:
    """Per-class IoU and the summary metrics of several chains side by side (percent).

    ``results``: :class:`hmsa_keras.evaluation.ChainResult` objects (``name``, ``metrics``,
    ``seconds``, ``num_images``)."""
    names = [r.name for r in results]
    width = max(10, max(len(n) for n in names) + 2)
    classes = [p["name"] for p in results[0].metrics["per_class"]]
    name_w = max([len("class")] + [len(c) for c in classes] + [len("mean class accuracy")])

    def cell(x):
        return (
            f"{'-':>{width}}"
            if x is None or (isinstance(x, float) and math.isnan(x))
            else f"{100 * x:>{width}.2f}"
        )

    header = f"{'class':<{name_w}}" + "".join(f"{n:>{width}}" for n in names)
    lines = [header, "-" * len(header)]
    for i, c in enumerate(classes):
        lines.append(
            f"{c:<{name_w}}" + "".join(cell(r.metrics["per_class"][i]["iou"]) for r in results)
        )
    lines.append("-" * len(header))
    for key, label in (
        ("miou", "mIoU"),
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_class_accuracy", "mean class accuracy"),
        ("fw_iou", "fw IoU"),
    ):
        lines.append(f"{label:<{name_w}}" + "".join(cell(r.metrics[key]) for r in results))
    lines.append(
        f"{'s/image':<{name_w}}"
        + "".join(f"{r.seconds / r.num_images:>{width}.3f}" for r in results)
        + "   (one shared pass: same time for every chain)" * (len(results) > 1)
    )
    return "\n".join(lines)


def write_results(results, output_dir: str) -> list:
    """Writes ``metrics_<tag>.json`` (with the confusion matrix) and ``metrics_<tag>.csv``
    per chain and, for several chains, ``sweep.json`` / ``sweep.csv``. Returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for r in results:
        payload = dict(r.metrics, confusion_matrix=r.confusion_matrix.tolist())
        js, cs = (os.path.join(output_dir, f"metrics_{r.tag}.{ext}") for ext in ("json", "csv"))
        write_metrics(payload, js, cs)
        paths += [js, cs]
    if len(results) > 1:
        keys = ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou", "seconds_per_image")
        summary = [
            {
                "chain": r.name,
                "scales": list(r.scales),
                "flip": r.flip,
                **{k: r.metrics[k] for k in keys},
            }
            for r in results
        ]
        js = os.path.join(output_dir, "sweep.json")
        with open(js, "w") as f:
            json.dump(_json_safe(summary), f, indent=2)
        csv_path = os.path.join(output_dir, "sweep.csv")
        with open(csv_path, "w") as f:
            f.write("chain," + ",".join(keys) + "\n")
            for row in summary:
                f.write(f'"{row["chain"]}",' + ",".join(_csv(row[k]) for k in keys) + "\n")
        paths += [js, csv_path]
    return paths


def _csv(x):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))
