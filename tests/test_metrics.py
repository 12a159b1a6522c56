"""Tests for hmsa_keras.metrics (single device; see test_metrics_distributed.py)."""

import csv
import json
import math

import keras
import numpy as np
import tensorflow as tf

from hmsa_keras import metrics as M

IGN = 255

# 2x4 labels / preds, K = 3; class 2 never appears in the ground truth.
LABELS = np.array([[[0, 0, 1, IGN], [1, 1, 0, IGN]]], np.int32)
PREDS = np.array([[[0, 1, 1, 2], [1, 2, 0, 0]]], np.int32)
# valid pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (1,2) (0,0)
EXPECTED_CM = np.array([[2, 1, 0], [0, 2, 1], [0, 0, 0]])


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix(LABELS, PREDS, 3)
    assert cm.dtype == tf.int64
    np.testing.assert_array_equal(cm.numpy(), EXPECTED_CM)


def test_confusion_matrix_from_logits_and_negative_labels():
    logits = np.eye(3, dtype=np.float32)[PREDS] * 5.0
    labels = LABELS.copy()
    labels[0, 0, 0] = -1  # negative gt skipped as well
    cm = M.confusion_matrix(labels[..., None], logits, 3).numpy()
    expected = EXPECTED_CM.copy()
    expected[0, 0] -= 1
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_sample_weight():
    w = np.array([2.0])
    cm = M.confusion_matrix(LABELS, PREDS, 3, sample_weight=w, dtype=tf.float64).numpy()
    np.testing.assert_array_equal(cm, 2 * EXPECTED_CM)


def test_compute_metrics_by_hand_with_absent_class():
    m = M.compute_metrics(EXPECTED_CM, class_names=["a", "b", "c"])
    # class 0: TP 2, FP 0, FN 1 -> 2/3 ; class 1: TP 2, FP 1, FN 1 -> 1/2 ;
    # class 2: TP 0, FP 1, FN 0 -> 0 (present in predictions only)
    ious = [r["iou"] for r in m["per_class"]]
    np.testing.assert_allclose(ious, [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(m["miou"], (2 / 3 + 1 / 2 + 0) / 3)
    np.testing.assert_allclose(m["pixel_accuracy"], 4 / 6)
    # recall of class 2 is undefined (no gt) -> excluded from mean class accuracy
    assert math.isnan(m["per_class"][2]["recall"])
    np.testing.assert_allclose(m["mean_class_accuracy"], (2 / 3 + 2 / 3) / 2)
    np.testing.assert_allclose(m["fw_iou"], 3 / 6 * 2 / 3 + 3 / 6 * 1 / 2)
    np.testing.assert_allclose(m["per_class"][0]["precision"], 1.0)
    np.testing.assert_allclose(m["per_class"][1]["precision"], 2 / 3)
    np.testing.assert_allclose(m["per_class"][2]["precision"], 0.0)
    r1 = m["per_class"][1]
    np.testing.assert_allclose([r1["tp_share"], r1["fp_share"], r1["fn_share"]], [0.5, 0.25, 0.25])
    assert [r["gt_pixels"] for r in m["per_class"]] == [3, 3, 0]
    assert m["classes_present"] == 3 and m["total_pixels"] == 6


def test_class_absent_everywhere_is_nan_and_excluded():
    cm = np.zeros((4, 4))
    cm[0, 0], cm[1, 1], cm[1, 0] = 5, 3, 1
    m = M.compute_metrics(cm)
    assert math.isnan(m["per_class"][2]["iou"]) and math.isnan(m["per_class"][3]["iou"])
    np.testing.assert_allclose(m["miou"], (5 / 6 + 3 / 4) / 2)
    assert m["classes_present"] == 2
    # metric class agrees
    met = M.ConfusionMatrixMetric(4)
    met.total_cm.assign(cm)
    np.testing.assert_allclose(float(met.result()), m["miou"], rtol=1e-6)


def test_perfect_prediction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(2, 8, 8)).astype(np.int32)
    labels[:, 0] = IGN
    cm = M.confusion_matrix(labels, labels.copy(), 5).numpy()
    m = M.compute_metrics(cm)
    assert m["miou"] == 1.0 and m["pixel_accuracy"] == 1.0
    assert m["mean_class_accuracy"] == 1.0 and abs(m["fw_iou"] - 1.0) < 1e-12
    met = M.ConfusionMatrixMetric(5)
    met.update_state(labels, np.where(labels == IGN, 0, labels))
    assert float(met.result()) == 1.0


def test_empty_matrix():
    m = M.compute_metrics(np.zeros((3, 3)))
    assert math.isnan(m["miou"]) and math.isnan(m["pixel_accuracy"])
    met = M.ConfusionMatrixMetric(3)
    assert float(met.result()) == 0.0


def test_keras_metric_accumulates_like_one_big_matrix():
    rng = np.random.default_rng(1)
    k = 4
    labels = rng.integers(0, k, size=(6, 5, 7)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = IGN
    logits = rng.standard_normal((6, 5, 7, k)).astype(np.float32)
    met = M.ConfusionMatrixMetric(k, name="val_miou")
    for i in range(0, 6, 2):
        met.update_state(labels[i : i + 2], logits[i : i + 2])
    big = M.confusion_matrix(labels, logits, k).numpy()
    np.testing.assert_array_equal(met.matrix().numpy(), big)
    np.testing.assert_allclose(float(met.result()), M.compute_metrics(big)["miou"], rtol=1e-6)
    # class-map input gives the same
    met2 = M.ConfusionMatrixMetric(k)
    met2.update_state(labels, np.argmax(logits, -1))
    np.testing.assert_array_equal(met2.matrix().numpy(), big)
    met.reset_state()
    assert met.matrix().numpy().sum() == 0


def test_keras_metric_in_tf_function_and_config():
    met = M.ConfusionMatrixMetric(3, name="miou")

    @tf.function
    def step(y, p):
        met.update_state(y, p)

    step(tf.constant(LABELS), tf.constant(PREDS))
    step(tf.constant(LABELS), tf.constant(PREDS))
    np.testing.assert_array_equal(met.matrix().numpy(), 2 * EXPECTED_CM)
    cfg = met.get_config()
    assert cfg["num_classes"] == 3 and cfg["name"] == "miou"
    clone = M.ConfusionMatrixMetric.from_config(cfg)
    assert clone.num_classes == 3
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(met))
    assert isinstance(restored, M.ConfusionMatrixMetric)


def test_format_and_write(tmp_path):
    m = M.compute_metrics(EXPECTED_CM, class_names=["road", "car", "sky"])
    table = M.format_table(m)
    assert "road" in table and "mIoU" in table and "38.89" in table
    sky_row = [ln for ln in table.splitlines() if " sky " in ln][0]
    assert sky_row.split()[-2] == "-"  # sky recall undefined (absent from ground truth)
    jp, cp = tmp_path / "out" / "m.json", tmp_path / "out" / "m.csv"
    M.write_metrics(m, jp, cp)
    d = json.loads(jp.read_text())
    assert d["per_class"][2]["recall"] is None
    np.testing.assert_allclose(d["miou"], m["miou"])
    rows = list(csv.reader(cp.open()))
    assert rows[0][:3] == ["id", "name", "iou"]
    assert rows[3][1] == "sky" and rows[3][7] == ""
    assert ["summary", "miou"] == rows[4][:2]


def test_metric_without_float64_keeps_exact_counts_in_two_int32_variables(monkeypatch):
    """The JAX-without-x64 layout (high * 2**20 + low, int32), forced here: counts past
    2**20 carry into the high part and stay exact, and the mIoU is the same."""
    monkeypatch.setattr(M, "float64_available", lambda: False)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=(1, 1100, 1000)).astype(np.int32)  # > 2**20 pixels
    preds = np.where(rng.random(labels.shape) < 0.8, labels, 0).astype(np.int32)
    met = M.ConfusionMatrixMetric(3)
    assert met.total_cm.dtype == "int32" and met.total_cm_high.dtype == "int32"
    for _ in range(3):
        met.update_state(labels, preds)
    want = 3 * M.confusion_matrix(labels, preds, 3).numpy().astype(np.float64)
    assert want.max() > 2**20
    np.testing.assert_array_equal(met.matrix(), want)
    assert met.total_cm_high.numpy().max() > 0
    np.testing.assert_allclose(float(met.result()), M.compute_metrics(want)["miou"], rtol=1e-6)
    met.reset_state()
    assert met.matrix().sum() == 0
