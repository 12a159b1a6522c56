"""TensorBoard for a training run: scalars, and images that diagnose the model.

``logs/train`` (every 10 steps, images every ``--image_every`` steps and at each epoch end):
losses, ``learning_rate``, ``steps_per_second``; ``images/input``, ``images/ground_truth``,
``images/prediction`` and ``images/attention_<s>x`` of the first validation image.

``logs/val`` (every validation):

- scalars: the loss terms, ``miou``, ``pixel_accuracy``, ``mean_class_accuracy`` and
  ``iou/<class>`` per class;
- ``images/examples``: a fixed set of ``--summary_images`` validation images, chosen in the
  run's first validation to cover the classes (an image is taken when its ground truth holds
  a class no chosen image has), one row each: input, ground truth, prediction and the
  attention of every scale the fusion reads, with a colour bar (attention 0..1) and a legend
  of the classes shown;
- ``images/worst``: the ``--worst_images`` validation images with the lowest IoU in this
  validation, same panels, the IoU in the row title;
- ``images/confusion_matrix``: the confusion matrix of the validation, each ground-truth row
  normalised to 100 %.

The per-image IoU is the mean over the classes present in that image's ground truth or
prediction of ``TP / (TP + FP + FN)``, from the difference of the running confusion matrix
before and after its validation step (:class:`ValidationWatcher`), so it costs no extra
forward pass. With several replicas a step holds one image per replica and they share the
step's IoU. Predictions in the images use the run's inference chain (``--eval_scales``).

Every value is a TF2 summary, stored as a *tensor* event: read them with
``EventAccumulator(path, size_guidance={"tensors": 0})`` and ``Tags()["tensors"]`` /
``Tensors(tag)`` (``Tags()["scalars"]`` is empty), or ``tf.compat.v1.train.summary_iterator``
(docs/training.md, "TensorBoard").
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np

from hmsa_keras import visualize
from hmsa_keras.conventions import IGNORE_LABEL

DISPLAY_SIDE = 320  # panels are subsampled to at most this many pixels on their long side


# ----------------------------------------------------------------------------- per-image scores
def image_iou(cm) -> Optional[float]:
    """Mean IoU over the classes with ``TP + FP + FN > 0`` of a ``[K, K]`` confusion matrix
    (rows = ground truth); None when it holds no pixel."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    if not present.any():
        return None
    return float(np.mean(tp[present] / union[present]))


class ValidationWatcher:
    """Watches a validation pass step by step (the running confusion matrix after each step)
    to pick the fixed example images (first pass) and the worst images (every pass).

    Args:
      num_examples: size of the fixed set (chosen once, in the first pass).
      num_worst: worst images kept per pass.
    """

    def __init__(self, num_examples: int, num_worst: int):
        self.num_examples, self.num_worst = int(num_examples), int(num_worst)
        self.examples: List[dict] = []  # {"index", "image", "label"} (numpy, normalised image)
        self.worst: List[dict] = []  # {"index", "iou", "image", "label"}, lowest IoU first
        self._chosen = False
        self._covered = set()
        self._reserve: List[dict] = []
        self._previous = None
        self._index = 0

    @property
    def active(self) -> bool:
        return self.num_examples > 0 or self.num_worst > 0

    def begin(self):
        """A new validation pass starts (the confusion matrix was reset)."""
        self.worst, self._previous, self._index = [], None, 0

    def observe(self, local_batches: Sequence, matrix):
        """After one validation step: ``local_batches`` = the step's ``(images, labels)`` per
        replica (tensors or arrays), ``matrix`` = the running ``[K, K]`` confusion matrix."""
        matrix = np.asarray(matrix, np.float64)
        step_cm = matrix if self._previous is None else matrix - self._previous
        self._previous = matrix
        items = []
        for images, labels in local_batches:
            for b in range(int(images.shape[0])):
                if len(local_batches) > 1 and np.all(np.asarray(labels[b]) == IGNORE_LABEL):
                    continue  # filler completing a last multi-replica batch
                items.append((self._index, images, labels, b))
                self._index += 1
        score = image_iou(step_cm)
        if score is None:
            return
        if not self._chosen and len(self.examples) < self.num_examples:
            classes = set(np.nonzero(step_cm.sum(1) > 0)[0].tolist())
            if classes - self._covered:
                self._covered |= classes
                self.examples += [self._take(it) for it in items][
                    : self.num_examples - len(self.examples)
                ]
            elif len(self._reserve) < self.num_examples:
                self._reserve += [self._take(it) for it in items]
        if self.num_worst and (len(self.worst) < self.num_worst or score < self.worst[-1]["iou"]):
            self.worst += [dict(self._take(it), iou=score) for it in items]
            self.worst = sorted(self.worst, key=lambda w: (w["iou"], w["index"]))[: self.num_worst]

    def end(self):
        """The pass is over: the example set is fixed from now on (topped up from the first
        images if the class cover needed fewer)."""
        if not self._chosen:
            taken = {e["index"] for e in self.examples}
            self.examples += [r for r in self._reserve if r["index"] not in taken][
                : self.num_examples - len(self.examples)
            ]
            self.examples.sort(key=lambda e: e["index"])
            self._chosen, self._reserve = True, []

    @staticmethod
    def _take(item):
        index, images, labels, b = item
        return {"index": index, "image": np.asarray(images[b]), "label": np.asarray(labels[b])}


# ----------------------------------------------------------------------------- rendering
def _subsample(x, side=DISPLAY_SIDE):
    step = max(1, int(np.ceil(max(x.shape[0], x.shape[1]) / side)))
    return x[::step, ::step]


def _canvas(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _viridis(values):
    """[H, W] in [0, 1] -> [H, W, 3] uint8 with matplotlib's viridis colour map."""
    from matplotlib import colormaps

    table = (colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    return table[np.clip(np.rint(np.asarray(values, np.float32) * 255), 0, 255).astype(np.int64)]


def render_rows(rows, class_names, colors, attention_scales, row_titles=None) -> np.ndarray:
    """One figure, one row per image: input | ground truth | prediction | attention per scale.

    Args:
      rows: dicts with ``image`` ``[H, W, 3]`` uint8, ``label`` and ``prediction`` ``[H, W]``
        int class maps (ignore = 255), ``attention`` ``{scale: [H, W]}`` in [0, 1]. Every
        row has the size of the first (panels are subsampled to at most
        :data:`DISPLAY_SIDE` pixels on their long side).
      class_names, colors: the dataset's classes (legend of those shown).
      attention_scales: the attention columns, in order.
      row_titles: optional text per row.
    Returns:
      the figure as ``[h, w, 3]`` uint8, with a colour bar for the attention columns (viridis,
      0..1) and a legend of every class present in the shown ground truths and predictions.

    The panels are composed with NumPy into one image (matplotlib draws that image, the
    titles, the colour bar and the legend): a few artists, so that a figure costs tens of
    milliseconds, not one axes per panel.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    columns = ["input", "ground truth", "prediction"]
    columns += [f"attention {s:g}x" for s in attention_scales]
    h, w = _subsample(rows[0]["label"]).shape
    gap, title_px, dpi = 6, 16, 72
    palette = visualize.palette_array(colors)
    grid = np.full((len(rows) * (h + title_px), len(columns) * (w + gap) - gap, 3), 255, np.uint8)
    shown = set()
    for r, row in enumerate(rows):
        label, pred = _subsample(row["label"])[:h, :w], _subsample(row["prediction"])[:h, :w]
        shown |= set(np.unique(label).tolist()) | set(np.unique(pred).tolist())
        panels = [
            _subsample(row["image"])[:h, :w],
            palette[np.clip(label, 0, 255)],
            palette[np.clip(pred, 0, 255)],
        ]
        panels += [_viridis(_subsample(row["attention"][s])[:h, :w]) for s in attention_scales]
        top = r * (h + title_px) + title_px
        for c, panel in enumerate(panels):
            grid[top : top + panel.shape[0], c * (w + gap) : c * (w + gap) + panel.shape[1]] = panel
    present = [k for k in sorted(shown) if 0 <= k < len(class_names)]
    handles = [
        Patch(
            facecolor=np.asarray(colors[k]) / 255.0,
            edgecolor="black",
            linewidth=0.3,
            label=f"{k} {class_names[k]}",
        )
        for k in present
    ]
    if 255 in shown:
        handles.append(Patch(facecolor="black", label="ignore"))
    ncol = max(1, min(len(handles), grid.shape[1] // 110))
    header_px, legend_px = title_px, 8 + 13 * int(np.ceil(len(handles) / ncol)) if handles else 0
    bar_px = 70 if attention_scales else 0
    width, height = grid.shape[1] + bar_px + 8, header_px + grid.shape[0] + legend_px
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.figimage(grid, xo=4, yo=legend_px, origin="upper")
    for c, name in enumerate(columns):  # column titles above the first row
        fig.text(
            (4 + c * (w + gap) + w / 2) / width,
            1 - 2 / height,
            name,
            ha="center",
            va="top",
            fontsize=8,
        )
    for r in range(len(rows)):
        text = row_titles[r] if row_titles else None
        if text:
            y = 1 - (header_px + r * (h + title_px) + 2) / height
            fig.text(4 / width, y, text, ha="left", va="top", fontsize=8)
    if attention_scales:
        import matplotlib as mpl

        cax = fig.add_axes(
            [
                (width - bar_px + 12) / width,
                (legend_px + 10) / height,
                12 / width,
                (grid.shape[0] - 20) / height,
            ]
        )
        bar = fig.colorbar(
            mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap="viridis"), cax=cax
        )
        bar.set_label("attention (sigmoid)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=ncol,
            fontsize=7,
            frameon=False,
            borderaxespad=0.2,
            handlelength=1.2,
            columnspacing=1.0,
        )
    return _canvas(fig)


def render_confusion_matrix(cm, class_names, title="") -> np.ndarray:
    """The ``[K, K]`` confusion matrix (rows = ground truth) with each row normalised to
    100 %, cells annotated (K <= 30), as ``[h, w, 3]`` uint8."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    cell = 0.26 if k <= 30 else max(0.08, 8.0 / k)
    margin, top, right = 1.25, 0.35, 0.95  # inches: tick labels, title, colour bar
    width, height = cell * k + margin + right, cell * k + margin + top
    fig = Figure(figsize=(width, height), dpi=72)
    fig.subplots_adjust(
        left=margin / width, right=1 - right / width, bottom=margin / height, top=1 - top / height
    )
    ax = fig.subplots()
    image = ax.imshow(100 * share, vmin=0, vmax=100, cmap="Blues")
    names = [f"{i} {n}" if len(n) <= 16 else f"{i} {n[:15]}." for i, n in enumerate(class_names)]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("prediction", fontsize=8)
    ax.set_ylabel("ground truth", fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if share[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * share[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if share[i, j] > 0.6 else "black",
                    )
    cax = fig.add_axes(
        [1 - (right - 0.1) / width, margin / height, 0.12 / width, cell * k / height]
    )
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("% of the ground-truth row", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return _canvas(fig)


# ----------------------------------------------------------------------------- writers
class Summaries:
    """Writers for ``logs/train`` and ``logs/val``; a no-op on non-chief workers.

    Args:
      model_dir: the run directory.
      info: the dataset's :class:`~hmsa_keras.data.DatasetInfo` (class names, colours).
      enabled: False on non-chief workers.
      chain: the inference scale chain of the images (``--eval_scales``).
    """

    def __init__(self, model_dir, info, enabled=True, chain=(0.5, 1.0)):
        import tensorflow as tf

        self.info = info
        self.enabled = enabled
        self.chain = tuple(float(s) for s in chain)
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "train"))
            self.val = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "val"))

    def scalars(self, which, values, step):
        if not self.enabled:
            return
        import tensorflow as tf

        with getattr(self, which).as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def validation(self, logs, metrics, step):
        """Scalars of a validation: losses, mIoU, accuracies and ``iou/<class>``."""
        if not self.enabled:
            return
        import tensorflow as tf

        with self.val.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("pixel_accuracy", metrics["pixel_accuracy"])
            tf.summary.scalar("mean_class_accuracy", metrics["mean_class_accuracy"])
            for row in metrics["per_class"]:
                if not np.isnan(row["iou"]):
                    tf.summary.scalar(f"iou/{row['name']}", row["iou"])

    def _attention_scales(self, model):
        from hmsa_keras.models import fusion

        return tuple(fusion.attention_scales(getattr(model, "fusion", "hierarchical"), self.chain))

    def _predict(self, model, images):
        from hmsa_keras.inference import compiled_segment

        return compiled_segment(model, self.chain, return_details=True)(images)

    def images(self, model, images, labels, step, max_images=2):
        """``logs/train``: input, ground truth, prediction and attention of the first images."""
        if not self.enabled:
            return
        import tensorflow as tf

        from hmsa_keras.data.normalization import denormalize

        images, labels = images[:max_images], labels[:max_images]
        out = self._predict(model, tf.cast(images, tf.float32))
        colors = self.info.colors
        panels = {
            "input": denormalize(np.asarray(images)),
            "ground_truth": visualize.colorize(np.asarray(labels), colors),
            "prediction": visualize.colorize(out["classes"].numpy(), colors),
        }
        for s in self._attention_scales(model):
            panels[f"attention_{s:g}x"] = visualize.attention_to_rgb(
                out["attention"][s].numpy()[..., 0]
            )
        with self.train.as_default(step=step):
            for name, value in panels.items():
                tf.summary.image(f"images/{name}", value, max_outputs=max_images)

    def _rows(self, model, items):
        from hmsa_keras.data.normalization import denormalize

        rows = []
        for item in items:
            out = self._predict(model, item["image"][None].astype(np.float32))
            rows.append(
                {
                    "image": denormalize(item["image"]),
                    "label": np.asarray(item["label"]),
                    "prediction": out["classes"].numpy()[0],
                    "attention": {s: a.numpy()[0, ..., 0] for s, a in out["attention"].items()},
                }
            )
        return rows

    def validation_images(self, model, watcher: Optional[ValidationWatcher], cm, metrics, step):
        """``logs/val``: the fixed examples, the worst images and the confusion matrix."""
        if not self.enabled:
            return
        import tensorflow as tf

        names, colors = list(self.info.class_names), self.info.colors
        scales = self._attention_scales(model)
        chain = ",".join(f"{s:g}" for s in self.chain)
        figures = {}
        if watcher is not None and watcher.examples:
            rows = self._rows(model, watcher.examples)
            titles = [f"val image {e['index']}" for e in watcher.examples]
            figures["images/examples"] = (
                render_rows(rows, names, colors, scales, titles),
                f"Fixed validation images (chosen to cover the classes), chain {chain}.",
            )
        if watcher is not None and watcher.worst:
            rows = self._rows(model, watcher.worst)
            titles = [
                f"#{r + 1}: val image {w['index']}, IoU {w['iou']:.3f}"
                for r, w in enumerate(watcher.worst)
            ]
            figures["images/worst"] = (
                render_rows(rows, names, colors, scales, titles),
                f"The {len(rows)} validation images with the lowest IoU, chain {chain}.",
            )
        title = (
            f"step {step}: mIoU {metrics['miou']:.3f}, "
            f"pixel accuracy {metrics['pixel_accuracy']:.3f}"
        )
        figures["images/confusion_matrix"] = (
            render_confusion_matrix(cm, names, title),
            "Rows: ground truth, normalised to 100 %; columns: prediction.",
        )
        with self.val.as_default(step=step):
            for tag, (image, description) in figures.items():
                tf.summary.image(tag, image[None], description=description)
        self.val.flush()
