"""TensorBoard diagnostics (hmsa_keras/training/summaries.py): per-image IoU, the choice of the
fixed and worst validation images, the figures, and what lands in the event files."""

import io
import os

import numpy as np
import pytest


def _cm(labels, preds, k):
    """Independent confusion matrix (rows = ground truth), labels outside [0, k) ignored."""
    valid = (labels >= 0) & (labels < k)
    return np.bincount(labels[valid] * k + preds[valid], minlength=k * k).reshape(k, k)


def test_image_iou_is_the_mean_over_present_classes():
    from hmsa_keras.training.summaries import image_iou

    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    preds = np.array([[0, 1, 1, 1], [0, 2, 3, 3]])
    cm = _cm(labels, preds, 4)
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2;
    # class 3 never appears where the label is valid -> not present
    assert image_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert image_iou(np.zeros((4, 4))) is None


def _image(value, shape=(2, 2)):
    return np.full(shape + (3,), value, np.float32)


def test_watcher_picks_class_covering_examples_and_the_worst_images():
    from hmsa_keras.training.summaries import ValidationWatcher, image_iou

    k = 4
    rng = np.random.default_rng(0)
    # eight one-image steps: labels cover {0}, {0}, {0,1}, {1}, {2,3}, {0}, {3}, {1}
    label_sets = [[0], [0], [0, 1], [1], [2, 3], [0], [3], [1]]
    watcher = ValidationWatcher(num_examples=3, num_worst=2)
    for validation in range(2):
        watcher.begin()
        running = np.zeros((k, k))
        scores = []
        for i, classes in enumerate(label_sets):
            labels = rng.choice(classes, size=(4, 4))
            preds = np.where(rng.random((4, 4)) < 0.3 + 0.08 * i, labels, (labels + 1) % k)
            step = _cm(labels, preds, k)
            scores.append(image_iou(step))
            running = running + step
            watcher.observe([(_image(i)[None], labels[None])], running)
        watcher.end()
        # the fixed set: each image brings a new class, in validation order; chosen in the first
        # pass and kept in the second
        assert [e["index"] for e in watcher.examples] == [0, 2, 4]
        assert [float(e["image"][0, 0, 0]) for e in watcher.examples] == [0.0, 2.0, 4.0]
        worst = sorted(range(len(scores)), key=lambda i: scores[i])[:2]
        assert [w["index"] for w in watcher.worst] == worst, validation
        assert [w["iou"] for w in watcher.worst] == pytest.approx([scores[i] for i in worst])
        np.testing.assert_array_equal(watcher.worst[0]["image"], _image(worst[0]))


def test_watcher_tops_up_the_fixed_set_when_few_images_cover_the_classes():
    from hmsa_keras.training.summaries import ValidationWatcher

    watcher = ValidationWatcher(num_examples=3, num_worst=0)
    watcher.begin()
    running = np.zeros((2, 2))
    for i in range(5):  # every image holds the same single class
        running = running + _cm(np.zeros((2, 2), int), np.zeros((2, 2), int), 2)
        watcher.observe([(_image(i)[None], np.zeros((1, 2, 2), int))], running)
    watcher.end()
    assert [e["index"] for e in watcher.examples] == [0, 1, 2]


def _png(summary_value):
    import tensorflow as tf
    from PIL import Image

    blob = tf.make_ndarray(summary_value.tensor)  # [width, height, png bytes...]
    image = np.asarray(Image.open(io.BytesIO(blob[2])))
    assert image.shape[1] == int(blob[0]) and image.shape[0] == int(blob[1])
    return image


def read_events(folder):
    """{tag: [(step, summary value)]} of every event file in a folder."""
    import tensorflow as tf

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
                for v in event.summary.value:
                    out.setdefault(v.tag, []).append((event.step, v))
    return out


class _Segmenter:
    """Stands in for HMSA in ``Summaries`` (``segment`` + ``fusion``): class = column band,
    attention = a horizontal ramp, so that the figures are made without tracing a network
    (the real model is covered by tests/test_train_cli.py)."""

    fusion = "hierarchical"

    def segment(self, images, scales, flip=False, return_details=False):
        import tensorflow as tf

        shape = tf.shape(images)
        cols = tf.range(shape[2]) * 3 // shape[2]
        classes = tf.broadcast_to(cols[None, None, :], shape[:3])
        ramp = tf.cast(tf.range(shape[2]), tf.float32) / tf.cast(shape[2], tf.float32)
        attention = tf.broadcast_to(ramp[None, None, :, None], tf.concat([shape[:3], [1]], 0))
        return {
            "classes": classes,
            "logits": tf.one_hot(classes, 3),
            "attention": {s: attention for s in scales},
        }


def test_validation_images_land_in_the_val_event_file(tmp_path):
    """Summaries.validation_images: the examples, worst-image and confusion-matrix figures are
    PNG images under logs/val; EventAccumulator lists them (and the scalars) under
    Tags()['tensors']."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hmsa_keras.data.labels import DatasetInfo
    from hmsa_keras.metrics import compute_metrics
    from hmsa_keras.training.summaries import Summaries, ValidationWatcher

    k = 3
    info = DatasetInfo(
        "toy", k, 255, ["road", "car", "sky"], [(128, 64, 128), (0, 0, 142), (70, 130, 180)]
    )
    model = _Segmenter()
    summaries = Summaries(str(tmp_path), info, chain=(0.5, 1.0))
    watcher = ValidationWatcher(num_examples=2, num_worst=2)
    rng = np.random.default_rng(3)
    watcher.begin()
    running = np.zeros((k, k))
    for i in range(3):
        labels = rng.integers(0, k, (1, 32, 48))
        images = tf.constant(rng.standard_normal((1, 32, 48, 3)).astype(np.float32))
        running = running + _cm(labels[0], rng.integers(0, k, (32, 48)), k)
        watcher.observe([(images, tf.constant(labels))], running)
    watcher.end()
    metrics = compute_metrics(running, info.class_names)
    summaries.validation({"loss": 1.0, "miou": metrics["miou"]}, metrics, step=7)
    summaries.validation_images(model, watcher, running, metrics, step=7)
    summaries.val.flush()

    events = read_events(tmp_path / "logs" / "val")
    for tag in ("images/examples", "images/worst", "images/confusion_matrix"):
        assert tag in events and events[tag][0][0] == 7, sorted(events)
    examples, worst = _png(events["images/examples"][0][1]), _png(events["images/worst"][0][1])
    cm_image = _png(events["images/confusion_matrix"][0][1])
    # two rows of four panels (input, truth, prediction, 0.5x attention) + colour bar + legend
    assert examples.shape[0] > 1.5 * 2 * 0.3 * examples.shape[1] / 4 and examples.shape[2] in (3, 4)
    assert worst.shape == examples.shape
    assert cm_image.shape[0] > 100 and cm_image.shape[1] > 100
    # the legend shows the dataset's colours: the 'car' colour appears in the figure somewhere
    assert np.any(np.all(examples[..., :3] == (0, 0, 142), axis=-1))

    accumulator = EventAccumulator(str(tmp_path / "logs" / "val"), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert "miou" in tags["tensors"] and "images/examples" in tags["tensors"]
    assert "miou" not in tags["scalars"]  # TF2 summaries are tensor events
    miou = tf.make_ndarray(accumulator.Tensors("miou")[0].tensor_proto)
    assert float(miou) == pytest.approx(metrics["miou"])


def test_confusion_matrix_figure_of_many_classes_is_readable():
    from hmsa_keras.training.summaries import render_confusion_matrix

    few = render_confusion_matrix(np.eye(3) * 10, ["a", "b", "c"])
    many = render_confusion_matrix(np.eye(40) * 10 + 1, [f"class {i}" for i in range(40)])
    assert many.shape[0] > few.shape[0] and many.dtype == np.uint8
