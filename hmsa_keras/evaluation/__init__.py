"""Evaluating a model over a dataset split: one confusion matrix per scale chain.

:func:`evaluate` runs a model over ``(normalised image, label)`` batches and accumulates
one confusion matrix per scale chain (rows = ground truth; pixels labelled outside
``[0, K)``, i.e. the ignore label, are skipped). Several chains (a *sweep*) share ONE pass:
``HMSA.segment_chains`` runs each scale of their union once per image. Under a
``tf.distribute`` strategy each replica takes whole batches in turn (images of different
sizes never share a replica batch) and the matrices are summed over replicas; a last,
incomplete round gives the idle replicas a copy of a real batch whose labels are all
ignore, so the count is exact. With ``tile_size`` every image is segmented tile by tile
(:func:`hmsa_keras.inference.segment_image`), one replica.

Anything with ``segment(images, scales=..., flip=...)`` returning ``classes`` (or
``logits``) can be evaluated, e.g. the SavedModel reader
:class:`hmsa_keras.export.saved_model.SavedModelSegmenter`. The Cityscapes submission
writer and official evaluator are in :mod:`hmsa_keras.evaluation.cityscapes`; report
formatting (:func:`hmsa_keras.metrics.format_sweep`, ``write_results``) in
:mod:`hmsa_keras.metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from hmsa_keras.conventions import IGNORE_LABEL, Chain, chain_name, chain_tag, parse_scales

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ChainResult:
    """The outcome of evaluating one scale chain over a split."""

    scales: Chain
    flip: bool
    confusion_matrix: np.ndarray  # int64 [K, K], rows = ground truth
    metrics: dict  # hmsa_keras.metrics.compute_metrics(...) plus chain / timing fields
    num_images: int
    seconds: float

    @property
    def name(self):
        return chain_name(self.scales, self.flip)

    @property
    def tag(self):
        return chain_tag(self.scales, self.flip)


def classes_per_chain(model, images, chains, flip=False):
    """int32 class maps ``[B, H, W]``, one per chain: ``model.segment_chains`` when the model
    has it (each scale of the union runs once), else one ``segment`` call per chain."""
    import tensorflow as tf

    if hasattr(model, "segment_chains"):
        outs = model.segment_chains(images, chains, flip=flip)
    else:
        outs = [model.segment(images, scales=c, flip=flip) for c in chains]
    return [
        tf.cast(o["classes"], tf.int32)
        if "classes" in o
        else tf.argmax(o["logits"], axis=-1, output_type=tf.int32)
        for o in outs
    ]


def evaluate(
    model,
    dataset,
    num_classes: int,
    chains: Sequence[Sequence[float]] = ((1.0,),),
    flip: bool = False,
    strategy=None,
    class_names: Optional[Sequence[str]] = None,
    on_batch: Optional[Callable[[List[np.ndarray]], None]] = None,
    max_images: Optional[int] = None,
    log_every: int = 50,
    tile_size=None,
    tile_overlap: int = 128,
    tile_blend: str = "gaussian",
) -> List[ChainResult]:
    """Evaluates ``model`` over ``dataset`` for every chain in ``chains`` in one pass.

    Args:
      dataset: a ``tf.data`` dataset of ``(images [B, H, W, 3] normalised float32, labels
        [B, H, W] int)`` (per-replica batches under a strategy).
      num_classes: K; must equal the model's ``num_classes`` when it has one.
      chains: scale chains; flip: flip-TTA for every chain.
      on_batch: called with the NumPy class maps ``[B, H, W]`` of every chain, batch by batch in
        dataset order (e.g. :class:`~hmsa_keras.evaluation.cityscapes.CityscapesSubmissionWriter`).
      max_images: stop after about that many images (whole batches).
      tile_size, tile_overlap, tile_blend: tiled inference
        (:func:`hmsa_keras.inference.segment_image`); Keras models on one replica only.
    Returns:
      one :class:`ChainResult` per chain, in the order given.
    Raises:
      ValueError: no chain, a class-count mismatch, tiling with a strategy, or an empty dataset.
    """
    import tensorflow as tf

    from hmsa_keras.metrics import ConfusionMatrixMetric, compute_metrics

    chains = [parse_scales(c, "chains") for c in chains]
    if not chains:
        raise ValueError("evaluate needs at least one scale chain")
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and int(model_classes) != int(num_classes):
        raise ValueError(
            f"the model predicts {model_classes} classes but the dataset has {num_classes}: "
            "evaluate on the dataset the model was trained for (--dataset/--data_dir)"
        )
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if tile_size is not None and replicas > 1:
        raise ValueError("tiled evaluation runs on one replica: drop --tile_size or the strategy")
    with strategy.scope():
        metrics = [ConfusionMatrixMetric(num_classes, name=f"cm_{i}") for i in range(len(chains))]

    def replica_step(images, labels):
        labels = tf.cast(labels, tf.int32)
        if labels.shape.rank == 4:
            labels = tf.squeeze(labels, -1)
        classes = classes_per_chain(model, tf.cast(images, tf.float32), chains, flip)
        for metric, c in zip(metrics, classes):
            metric.update_state(labels, c)
        return classes

    count = {"images": 0, "logged": 0}
    start = time.perf_counter()

    def report(per_chain):
        count["images"] += per_chain[0].shape[0]
        if on_batch is not None:
            on_batch(per_chain)
        if log_every and count["images"] - count["logged"] >= log_every:
            count["logged"] = count["images"]
            log.info(
                "evaluated %d images (%.2f s/image)",
                count["images"],
                (time.perf_counter() - start) / count["images"],
            )

    def done():
        return bool(max_images) and count["images"] >= max_images

    if tile_size is not None:
        from hmsa_keras.data.normalization import denormalize
        from hmsa_keras.inference import segment_image

        for images, labels in dataset:
            pixels = denormalize(images.numpy())
            per_chain = [
                np.stack(
                    [
                        segment_image(
                            model,
                            p,
                            c,
                            flip,
                            tile_size=tile_size,
                            tile_overlap=tile_overlap,
                            tile_blend=tile_blend,
                        )["classes"]
                        for p in pixels
                    ]
                )
                for c in chains
            ]
            for metric, c in zip(metrics, per_chain):
                metric.update_state(tf.cast(labels, tf.int32), c)
            report(per_chain)
            if done():
                break
    elif replicas == 1:
        specs = [tf.TensorSpec([None] * len(s.shape), s.dtype) for s in dataset.element_spec]
        step = tf.function(replica_step, input_signature=specs)
        for images, labels in dataset:
            report([c.numpy() for c in step(images, labels)])
            if done():
                break
    else:
        _distributed(strategy, dataset, replica_step, report, max_images)
    seconds = time.perf_counter() - start
    if count["images"] == 0:
        raise ValueError("the dataset yielded no images: nothing to evaluate")

    results = []
    for scales, metric in zip(chains, metrics):
        cm = np.rint(metric.matrix().numpy()).astype(np.int64)  # summed over replicas on read
        m = compute_metrics(cm, class_names)
        m.update(
            scales=list(scales),
            flip=bool(flip),
            chain=chain_name(scales, flip),
            num_images=count["images"],
            seconds=seconds,
            seconds_per_image=seconds / count["images"],
            replicas=replicas,
            tile_size=list(tile_size) if tile_size is not None else None,
        )
        results.append(ChainResult(scales, bool(flip), cm, m, count["images"], seconds))
    return results


def _distributed(strategy, dataset, replica_step, report, max_images):
    """Each replica takes whole batches in turn (a MultiDeviceIterator deals elements
    round-robin); the last round is padded with copies of the first batch labelled all-ignore."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    batches = int(dataset.cardinality())
    if batches < 0:
        log.warning("dataset size unknown: counting its batches first (one extra read)")
        batches = int(dataset.reduce(0, lambda count, _: count + 1))
    if max_images:
        first_batch = int(next(iter(dataset))[0].shape[0])
        batches = min(batches, -(-max_images // first_batch))
    rounds = -(-batches // replicas)
    pad = dataset.take(1).map(
        lambda x, y: (x, tf.fill(tf.shape(y), tf.constant(IGNORE_LABEL, y.dtype)))
    )
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
                report([strategy.experimental_local_results(c)[r].numpy() for c in out])


__all__ = ["ChainResult", "classes_per_chain", "evaluate"]
