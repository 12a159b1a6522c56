"""Evaluating a model over a dataset split: one confusion matrix per scale chain.

The library side of ``hmsa-eval`` (see docs/evaluation.md):

- :func:`evaluate` runs a model over a ``tf.data`` split of ``(normalised image, label)``
  batches and accumulates one confusion matrix per scale chain (rows = ground truth,
  pixels labelled outside ``[0, K)``, i.e. ignore 255, skipped). Under a
  ``tf.distribute`` strategy each replica takes whole batches in turn (so images of
  different sizes never share a replica batch) and the matrices are summed over
  replicas; a last, incomplete round gives the idle replicas a copy of a real batch
  whose labels are all ignore, so the count is exact.
- Several chains (a *sweep*) are evaluated in ONE pass over the data: for an
  :class:`~hmsa_keras.HMSA` model each scale of the union of the chains runs once per
  image and every chain is fused from those outputs (fused exactly as
  ``model.segment`` does; a test checks the two agree).
- Anything with a ``segment(images, scales=..., flip=...)`` method returning
  ``classes`` (or ``logits``) can be evaluated, e.g. :class:`SavedModelSegmenter`
  for an exported SavedModel (whose scale chain is fixed at export).
- :class:`CityscapesSubmissionWriter` writes predictions in the official format
  (single-channel labelId PNGs named ``<city>_<seq>_<frame>_leftImg8bit.png``, the
  size of the ground truth) for ``cityscapesscripts``' evaluator or the test server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

Chain = Tuple[float, ...]


# ----------------------------------------------------------------------------- parsing
def parse_scales(text) -> Chain:
    """``"0.5,1.0,2.0"`` (or a sequence) -> sorted tuple of distinct positive floats."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"empty scale chain {text!r}: give comma-separated positive numbers, e.g. 0.5,1.0,2.0")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"bad scale chain {text!r}: give comma-separated positive numbers, "
                             "e.g. 0.5,1.0,2.0") from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise ValueError("empty scale chain: give at least one positive scale, e.g. 1.0")
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"every scale must be a finite number > 0, got {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"scales must be distinct, got {text!r}")
    return tuple(sorted(values))


def parse_sweep(text: str) -> List[Chain]:
    """``"1.0;0.5,1.0;0.5,1.0,2.0"`` -> list of chains (semicolon-separated)."""
    chains = [parse_scales(part) for part in text.split(";") if part.strip()]
    if not chains:
        raise ValueError(f"empty sweep {text!r}: give chains separated by ';', e.g. \"1.0;0.5,1.0\"")
    if len(set(chains)) != len(chains):
        raise ValueError(f"sweep lists a chain twice: {text!r}")
    return chains


def chain_name(scales: Sequence[float], flip: bool = False) -> str:
    """Human label: ``0.5,1,2+flip``."""
    return ",".join(f"{s:g}" for s in scales) + ("+flip" if flip else "")


def chain_tag(scales: Sequence[float], flip: bool = False) -> str:
    """File-name-safe label: ``s0.5-1-2_flip``."""
    return "s" + "-".join(f"{s:g}" for s in scales) + ("_flip" if flip else "")


# ----------------------------------------------------------------------- run configs
# ------------------------------------------------------------------------- segmenters
def _to_uint8(images):
    """Normalised float images -> uint8 pixels (exact inverse of normalisation, rounded)."""
    import tensorflow as tf

    from hmsa_keras.data.normalization import MEAN, STD

    pixels = (images * tf.constant(STD, tf.float32) + tf.constant(MEAN, tf.float32)) * 255.0
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


class SavedModelSegmenter:
    """Adapts an exported SavedModel (``serving_default``: uint8 ``images`` -> int32
    ``classes`` [+ ``probabilities``]) to the ``segment`` interface of :class:`HMSA`.

    The scale chain and flip are baked into the export; ``scales``/``flip`` passed to
    :meth:`segment` are ignored (the CLI says so).
    """

    def __init__(self, path: str, signature: str = "serving_default"):
        import tensorflow as tf

        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"{path!r} is not a SavedModel directory (no saved_model.pb)")
        self.path = path
        self.module = tf.saved_model.load(path)
        if signature not in self.module.signatures:
            raise ValueError(f"{path}: no signature {signature!r}; it has {sorted(self.module.signatures)}")
        self.fn = self.module.signatures[signature]
        inputs = self.fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"{path}: signature {signature!r} takes {sorted(inputs)}; expected one image input")
        self.input_name = next(iter(inputs))
        self.input_dtype = inputs[self.input_name].dtype
        outputs = self.fn.structured_outputs
        if "classes" not in outputs and "probabilities" not in outputs:
            raise ValueError(f"{path}: signature {signature!r} returns {sorted(outputs)}; expected 'classes'")
        self.num_classes = None
        probs = outputs.get("probabilities")
        if probs is not None and probs.shape.rank == 4 and probs.shape[-1] is not None:
            self.num_classes = int(probs.shape[-1])

    def segment(self, images, scales=None, flip=False, **unused):
        import tensorflow as tf

        pixels = _to_uint8(images) if self.input_dtype == tf.uint8 else images
        out = self.fn(**{self.input_name: tf.cast(pixels, self.input_dtype)})
        if "classes" in out:
            classes = tf.cast(out["classes"], tf.int32)
            if classes.shape.rank == 4:
                classes = tf.squeeze(classes, -1)
        else:
            classes = tf.argmax(out["probabilities"], axis=-1, output_type=tf.int32)
        result = {"classes": classes}
        if "probabilities" in out:
            result["probabilities"] = out["probabilities"]
        return result


def _classes_of(out):
    import tensorflow as tf

    if "classes" in out:
        return tf.cast(out["classes"], tf.int32)
    return tf.argmax(out["logits"], axis=-1, output_type=tf.int32)


def segment_chains(model, images, chains: Sequence[Chain], flip: bool = False):
    """Class maps ``[B, H, W]`` int32, one per chain: :meth:`HMSA.segment_chains` (each scale
    of the union of ``chains`` runs once) for models that have it, else one ``segment``
    call per chain (e.g. :class:`SavedModelSegmenter`)."""
    if hasattr(model, "segment_chains"):
        return [out["classes"] for out in model.segment_chains(images, chains, flip=flip)]
    return [_classes_of(model.segment(images, scales=c, flip=flip)) for c in chains]


# ------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class ChainResult:
    """The outcome of evaluating one scale chain over a split."""

    scales: Chain
    flip: bool
    confusion_matrix: np.ndarray  # int64 [K, K], rows = ground truth
    metrics: dict  # compute_metrics(...) plus chain / timing fields
    num_images: int
    seconds: float

    @property
    def name(self):
        return chain_name(self.scales, self.flip)

    @property
    def tag(self):
        return chain_tag(self.scales, self.flip)


def evaluate(model, dataset, num_classes: int, chains: Sequence[Sequence[float]] = ((1.0,),),
             flip: bool = False, strategy=None, class_names: Optional[Sequence[str]] = None,
             on_batch: Optional[Callable[[List[np.ndarray]], None]] = None,
             max_images: Optional[int] = None, log_every: int = 50) -> List[ChainResult]:
    """Evaluates ``model`` over ``dataset`` for every chain in ``chains`` in one pass.

    ``dataset`` yields ``(images [B, H, W, 3] normalised float32, labels [B, H, W] int)``
    batches (per-replica batches under a strategy: each replica takes whole batches in
    turn). ``on_batch(classes_per_chain)`` is called with numpy class maps ``[B, H, W]``
    (one per chain), batch by batch in dataset order (used to write predictions).
    ``max_images`` stops after about that many images (whole batches).
    Returns one :class:`ChainResult` per chain, in the order given.
    """
    import tensorflow as tf

    from hmsa_keras.metrics import ConfusionMatrixMetric, compute_metrics

    chains = [parse_scales(c) for c in chains]
    if not chains:
        raise ValueError("evaluate needs at least one scale chain")
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and int(model_classes) != int(num_classes):
        raise ValueError(f"the model predicts {model_classes} classes but the dataset has {num_classes}: "
                         "evaluate on the dataset the model was trained for (--dataset/--data_dir)")
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        metrics = [ConfusionMatrixMetric(num_classes, name=f"cm_{i}") for i in range(len(chains))]

    def replica_step(images, labels):
        labels = tf.cast(labels, tf.int32)
        if labels.shape.rank == 4:
            labels = tf.squeeze(labels, -1)
        classes = segment_chains(model, tf.cast(images, tf.float32), chains, flip)
        for metric, c in zip(metrics, classes):
            metric.update_state(labels, c)
        return classes

    image_spec, label_spec = (tf.TensorSpec([None] * len(spec.shape), spec.dtype) for spec in dataset.element_spec)
    num_images, start, last_log = 0, time.perf_counter(), 0

    def report(out, replica=None):
        nonlocal num_images, last_log
        per_chain = [c.numpy() if replica is None else strategy.experimental_local_results(c)[replica].numpy()
                     for c in out]
        num_images += per_chain[0].shape[0]
        if on_batch is not None:
            on_batch(per_chain)
        if log_every and num_images - last_log >= log_every:
            last_log = num_images
            log.info("evaluated %d images (%.2f s/image)", num_images,
                     (time.perf_counter() - start) / max(num_images, 1))

    if replicas == 1:
        step = tf.function(replica_step, input_signature=[image_spec, label_spec])
        for images, labels in dataset:
            report(step(images, labels))
            if max_images and num_images >= max_images:
                break
    else:
        # Each replica takes whole batches in turn (a MultiDeviceIterator deals elements
        # round-robin), so images of different sizes never share a replica batch. The
        # last round is padded with copies of the first batch labelled all-ignore.
        batches = int(dataset.cardinality())
        if batches < 0:
            log.warning("dataset size unknown: counting its batches first (one extra read)")
            batches = int(dataset.reduce(0, lambda count, _: count + 1))
        if max_images:
            first_batch = int(next(iter(dataset))[0].shape[0])
            batches = min(batches, -(-max_images // first_batch))
        rounds = -(-batches // replicas)
        pad = dataset.take(1).map(lambda x, y: (x, tf.fill(tf.shape(y), tf.constant(255, y.dtype))))
        padded = dataset.take(batches).concatenate(pad.repeat(replicas - 1)).take(rounds * replicas)
        iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: padded))

        @tf.function
        def step(it):
            images, labels = next(it)
            return strategy.run(replica_step, args=(images, labels))

        for k in range(rounds):
            out = step(iterator)
            for r in range(replicas):
                if k * replicas + r < batches:
                    report(out, r)
    seconds = time.perf_counter() - start
    if num_images == 0:
        raise ValueError("the dataset yielded no images: nothing to evaluate")

    results = []
    for scales, metric in zip(chains, metrics):
        cm = np.rint(metric.matrix().numpy()).astype(np.int64)  # summed over replicas on read
        m = compute_metrics(cm, class_names)
        m.update(scales=list(scales), flip=bool(flip), chain=chain_name(scales, flip),
                 num_images=num_images, seconds=seconds,
                 seconds_per_image=seconds / num_images, replicas=replicas)
        results.append(ChainResult(scales, bool(flip), cm, m, num_images, seconds))
    return results


# ----------------------------------------------------------------- Cityscapes output
class CityscapesSubmissionWriter:
    """``on_batch`` callback writing official Cityscapes result PNGs.

    ``pairs`` lists ``(image_path, label_path)`` in dataset order (``iter_pairs``).
    Each prediction is mapped trainId -> labelId and saved as a single-channel PNG
    ``out_dir/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` of the ground truth's size
    (resized with nearest neighbour if the evaluation ran at a reduced size, e.g.
    ``eval_long_edge``; a warning says so). ``chain`` selects which chain's predictions.
    """

    def __init__(self, out_dir: str, pairs: Sequence[Tuple[str, str]], chain: int = 0):
        from hmsa_keras.data.labels import cityscapes_train_id_to_label_id

        self.out_dir = out_dir
        self.pairs = list(pairs)
        self.chain = chain
        self.index = 0
        self.resized = 0
        self.table = cityscapes_train_id_to_label_id()
        os.makedirs(out_dir, exist_ok=True)

    @staticmethod
    def output_name(image_path: str) -> Tuple[str, str]:
        """(city, file name) for an image ``<city>_<seq>_<frame>_leftImg8bit.png``."""
        base = os.path.basename(image_path)
        stem = os.path.splitext(base)[0]
        if stem.endswith("_leftImg8bit"):
            stem = stem[: -len("_leftImg8bit")]
        parts = stem.split("_")
        if len(parts) < 3:
            raise ValueError(f"{image_path}: not a Cityscapes image name (<city>_<seq>_<frame>_leftImg8bit.png)")
        city = "_".join(parts[:-2])
        return city, f"{stem}_leftImg8bit.png"

    def __call__(self, classes_per_chain):
        from PIL import Image

        for classes in classes_per_chain[self.chain]:
            if self.index >= len(self.pairs):
                raise ValueError(f"more predictions than the {len(self.pairs)} listed images: "
                                 "the file list and the dataset disagree")
            image_path, label_path = self.pairs[self.index]
            self.index += 1
            with Image.open(label_path) as gt:
                gt_size = gt.size  # (W, H)
            label_ids = Image.fromarray(self.table[np.asarray(classes, np.int64)].astype(np.uint8), mode="L")
            if label_ids.size != gt_size:
                label_ids = label_ids.resize(gt_size, Image.NEAREST)
                self.resized += 1
            city, name = self.output_name(image_path)
            folder = os.path.join(self.out_dir, city)
            os.makedirs(folder, exist_ok=True)
            label_ids.save(os.path.join(folder, name))

    def close(self):
        if self.index != len(self.pairs):
            log.warning("wrote %d of %d Cityscapes predictions (evaluation stopped early?)",
                        self.index, len(self.pairs))
        if self.resized:
            log.warning("%d prediction(s) were resized (nearest) to the ground-truth size: the "
                        "evaluation ran at a reduced size (eval_long_edge), so the official "
                        "scores will differ from hmsa-eval's", self.resized)


def official_cityscapes_eval(results_dir: str, dataset_dir: str, split: str = "val",
                             quiet: bool = True) -> dict:
    """Runs ``cityscapesscripts``' pixel-level evaluator programmatically on ``results_dir``
    against ``dataset_dir/gtFine/<split>/*/*_gtFine_labelIds.png``.

    Returns ``{"miou": ..., "class_iou": {name: iou}, "raw": <evaluator dict>}``.
    Needs ``cityscapesscripts`` (and numpy < 2.4, or the ``np.in1d`` alias set below).
    """
    import glob

    if not hasattr(np, "in1d"):  # numpy >= 2.4 removed it; the evaluator still calls it
        np.in1d = lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    args = cs.CArgs()
    for key, value in vars(cs.args).items():
        setattr(args, key, value)
    args.cityscapesPath = dataset_dir
    args.predictionPath = os.path.abspath(results_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False  # needs *_instanceIds.png
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = quiet
    args.colorized = False
    args.bold = args.nocol = ""
    args.exportFile = os.path.join(results_dir, "resultPixelLevelSemanticLabeling.json")
    gts = sorted(glob.glob(os.path.join(dataset_dir, "gtFine", split, "*", "*_gtFine_labelIds.png")))
    if not gts:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png under {dataset_dir}/gtFine/{split}")
    preds = [cs.getPrediction(args, gt) for gt in gts]
    raw = cs.evaluateImgLists(preds, gts, args)
    class_iou = dict(raw["classScores"])
    values = [v for v in class_iou.values() if not math.isnan(v)]
    return {"miou": float(np.mean(values)) if values else float("nan"), "class_iou": class_iou, "raw": raw}


# -------------------------------------------------------------------------- reports
def format_sweep(results: Sequence[ChainResult]) -> str:
    """Per-class IoU and the summary metrics of several chains side by side (percent)."""
    names = [r.name for r in results]
    width = max(10, max(len(n) for n in names) + 2)
    classes = [p["name"] for p in results[0].metrics["per_class"]]
    name_w = max([len("class")] + [len(c) for c in classes] + [len("mean class accuracy")])

    def cell(x):
        return f"{'-':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) \
            else f"{100 * x:>{width}.2f}"

    header = f"{'class':<{name_w}}" + "".join(f"{n:>{width}}" for n in names)
    lines = [header, "-" * len(header)]
    for i, c in enumerate(classes):
        lines.append(f"{c:<{name_w}}" + "".join(cell(r.metrics["per_class"][i]["iou"]) for r in results))
    lines.append("-" * len(header))
    for key, label in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"),
                       ("mean_class_accuracy", "mean class accuracy"), ("fw_iou", "fw IoU")):
        lines.append(f"{label:<{name_w}}" + "".join(cell(r.metrics[key]) for r in results))
    lines.append(f"{'s/image':<{name_w}}" + "".join(f"{r.seconds / r.num_images:>{width}.3f}" for r in results)
                 + "   (one shared pass: same time for every chain)" * (len(results) > 1))
    return "\n".join(lines)


def write_results(results: Sequence[ChainResult], output_dir: str) -> List[str]:
    """Writes ``metrics_<tag>.json`` (with the confusion matrix) and ``metrics_<tag>.csv``
    per chain and, for several chains, ``sweep.json`` / ``sweep.csv``. Returns the paths."""
    from hmsa_keras.metrics import write_metrics

    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for r in results:
        payload = dict(r.metrics, confusion_matrix=r.confusion_matrix.tolist())
        js, cs = (os.path.join(output_dir, f"metrics_{r.tag}.{ext}") for ext in ("json", "csv"))
        write_metrics(payload, js, cs)
        paths += [js, cs]
    if len(results) > 1:
        keys = ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou", "seconds_per_image")
        summary = [{"chain": r.name, "scales": list(r.scales), "flip": r.flip,
                    **{k: r.metrics[k] for k in keys}} for r in results]
        js = os.path.join(output_dir, "sweep.json")
        with open(js, "w") as f:
            json.dump(_json_safe(summary), f, indent=2)
        csv_path = os.path.join(output_dir, "sweep.csv")
        with open(csv_path, "w") as f:
            f.write("chain," + ",".join(keys) + "\n")
            for row in summary:
                f.write(f"\"{row['chain']}\"," + ",".join(_csv(row[k]) for k in keys) + "\n")
        paths += [js, csv_path]
    return paths


def _csv(x):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


__all__ = [
    "ChainResult", "CityscapesSubmissionWriter", "SavedModelSegmenter", "chain_name", "chain_tag",
    "evaluate", "format_sweep", "official_cityscapes_eval", "parse_scales", "parse_sweep",
    "segment_chains", "write_results",
]
