"""The tf.data input pipeline: one entry point for every dataset.

``build_dataset(config, split, training, batch_size)`` yields batches of
``(image float32 [B, H, W, 3] normalised, label int32 [B, H, W])`` with 255 =
ignore.

Training: an endless stream of examples indexed by a counter ``i``. Example
``i`` reads image ``perm_e(i mod n)`` (a fresh stateless permutation for each
epoch ``e = i div n``), or, for a share ``class_uniform_fraction`` of examples,
the image of a class centroid (class drawn uniformly, then a centroid); it is
augmented with the stateless seed ``[config.seed, i]`` (see
:mod:`hmsa_keras.data.augment`). So the stream is a pure function of the
config: reproducible across runs and independent of parallelism.

With ``pre_size`` (the reference's Mapillary recipe) every training image is
first brought to that long edge, then scaled randomly.

Evaluation: every image once, in file order, full size (optionally resized
so that the long edge is at most ``eval_long_edge``, or exactly that with
``eval_upscale``), not augmented.

Files are decoded with PIL inside ``tf.numpy_function`` (PIL releases the GIL
while decoding), so a bad file stops the input with a :class:`DataError`
message naming it. Before that, ``build_dataset`` checks at build time (per
``config.validate``) that the split exists, is non-empty and every image has
its label (``paths``), plus that every file is a readable image of matching
size (``headers``, the default: reads file headers only), or decodes
everything (``full``).
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from hmsa_keras.conventions import min_size_problem
from hmsa_keras.data import augment as aug
from hmsa_keras.data import camvid, cityscapes, folder, mapillary, sampling, synthetic
from hmsa_keras.data.io import (
    DataError,
    check_pair,
    check_pair_header,
    format_problems,
    load_image_label,
    read_header,
)
from hmsa_keras.data.labels import DatasetInfo
from hmsa_keras.data.normalization import normalize

DATASETS = ("synthetic", "camvid", "cityscapes", "cityscapes_tfds", "mapillary", "folder")
FILE_DATASETS = {
    "camvid": camvid,
    "cityscapes": cityscapes,
    "mapillary": mapillary,
    "folder": folder,
}
VALIDATE_LEVELS = ("paths", "headers", "full")
_TFDS_SHUFFLE_BUFFER = 64
_SYNTHETIC_CACHE_BYTES = 512 * 2**20

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DataError",
    "build_dataset",
    "check_eval_inputs",
    "eval_image_sizes",
    "get_dataset_info",
    "iter_pairs",
    "load_image_label",
]


# ------------------------------------------------------------------ dataset lookup
def check_config(config):
    """Raise DataError for an unknown dataset, a missing data_dir or a bad ``validate`` level."""
    if config.dataset not in DATASETS:
        raise DataError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.dataset != "synthetic":
        if not config.data_dir:
            raise DataError(f"dataset {config.dataset!r} needs data_dir")
        if config.dataset != "cityscapes_tfds" and not os.path.isdir(config.data_dir):
            raise DataError(
                f"{config.data_dir}: data_dir of dataset {config.dataset!r} does not exist"
            )
    if config.validate not in VALIDATE_LEVELS:
        raise DataError(f"validate={config.validate!r}: choose one of {VALIDATE_LEVELS}")


def get_dataset_info(config, split: Optional[str] = None) -> DatasetInfo:
    """Class names, colours, ignore label (255) and raw-id table of ``config.dataset``.

    ``split`` only matters for Cityscapes, whose label files may hold labelIds
    or trainIds (default: ``config.train_split``).
    """
    check_config(config)
    if config.dataset == "synthetic":
        return synthetic.dataset_info(config)
    if config.dataset == "cityscapes_tfds":
        return cityscapes.dataset_info(config, split, kind="label_ids")
    if config.dataset == "cityscapes":
        return cityscapes.dataset_info(config, split)
    return FILE_DATASETS[config.dataset].dataset_info(config)


def list_split(config, split) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(pairs, problems) of a file-based split, without raising for the problems."""
    if config.dataset not in FILE_DATASETS:
        raise DataError(
            f"dataset {config.dataset!r} is not file-based: it has no (image, label) file pairs"
        )
    return FILE_DATASETS[config.dataset].list_pairs(config, split)


def iter_pairs(config, split: str) -> List[Tuple[str, str]]:
    """Sorted ``(image_path, label_path)`` of a file-based split (the evaluation order).

    Raises :class:`DataError` listing missing partners, a missing split or an empty one.
    """
    check_config(config)
    pairs, problems = list_split(config, split)
    title = f"{config.dataset} split {split!r} in {config.data_dir}"
    if problems:
        raise DataError(format_problems(title, problems))
    if not pairs:
        raise DataError(f"{title}: the split is empty (no images found)")
    return pairs


# ------------------------------------------------------------------------ sources
class _Source:
    """Random-access examples: ``load(index) -> (uint8 [H, W, 3], uint8 [H, W])`` in the graph."""

    def __init__(self, size, load, label_fn, static_shape=(None, None)):
        self.size = size
        self._load = load
        self.label_fn = label_fn  # python: index -> training-id map (for class centroids)
        self.static_shape = static_shape

    def load(self, index):
        image, label = self._load(index)
        h, w = self.static_shape
        image.set_shape([h, w, 3])
        label.set_shape([h, w])
        return image, label


def _synthetic_source(config, split):
    n = synthetic.split_size(config, split)
    if n <= 0:
        raise DataError(f"synthetic split {split!r} is empty (size {n})")
    size = tuple(int(v) for v in config.synthetic_image_size)
    seed = int(config.seed)
    # Scenes are pure functions of their index: memoise them (per source, not
    # globally) when the split fits in _SYNTHETIC_CACHE_BYTES, so later epochs
    # cost only augmentation.
    memo = {} if n * size[0] * size[1] * 4 <= _SYNTHETIC_CACHE_BYTES else None

    def gen(index):
        index = int(index)
        if memo is None:
            return synthetic.generate(seed, split, index, size)
        if index not in memo:
            memo[index] = synthetic.generate(seed, split, index, size)
        return memo[index]

    def load(index):
        return tf.numpy_function(gen, [index], [tf.uint8, tf.uint8], stateful=False)

    return _Source(n, load, lambda i: gen(i)[1], size)


def _validate(pairs, infos, sources, level, title):
    if level == "paths":
        return
    problems = []

    def one(k):
        img, lbl = pairs[k]
        if level == "headers":
            return check_pair_header(img, lbl)
        return check_pair(img, lbl, infos[sources[k]])[0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for found in pool.map(one, range(len(pairs))):
            problems.extend(found)
    if problems:
        raise DataError(format_problems(title, problems))


def _file_source(config, split, training):
    info = get_dataset_info(config, split)
    title = f"{config.dataset} split {split!r} in {config.data_dir}"
    pairs, problems = list_split(config, split)
    sources = [0] * len(pairs)
    infos = [info]
    if training and config.pseudo_label_dir:
        pseudo = folder.pseudo_info(config, info)
        extra, extra_problems = folder.list_pairs_in(config.pseudo_label_dir, split)
        problems += extra_problems
        if not extra and not extra_problems:
            problems.append(
                f"{folder.split_dir(config.pseudo_label_dir, split)}: pseudo-label set is empty"
            )
        pairs, sources, infos = pairs + extra, sources + [1] * len(extra), [info, pseudo]
    if problems:
        raise DataError(format_problems(title, problems))
    if not pairs:
        raise DataError(f"{title}: the split is empty (no images found)")
    _validate(pairs, infos, sources, config.validate, title)

    images = tf.constant([p[0] for p in pairs])
    labels = tf.constant([p[1] for p in pairs])
    source_ids = tf.constant(sources, tf.int32)

    def read(img_path, lbl_path, source):
        return load_image_label(img_path, lbl_path, infos[int(source)])

    def load(index):
        return tf.numpy_function(
            read,
            [tf.gather(images, index), tf.gather(labels, index), tf.gather(source_ids, index)],
            [tf.uint8, tf.uint8],
            stateful=False,
        )

    def label_fn(k):
        return read(pairs[k][0], pairs[k][1], sources[k])[1]

    source = _Source(len(pairs), load, label_fn)
    source.pairs, source.luts = pairs, [i.lut for i in infos]
    return source


def _centroid_tensors(config, split, source, num_classes):
    if isinstance(getattr(source, "pairs", None), list):
        cents = sampling.cached_centroids(
            config, split, source.pairs, np.concatenate(source.luts), source.label_fn, num_classes
        )
    else:
        cents = sampling.compute_centroids(
            source.size, source.label_fn, num_classes, int(config.class_uniform_tile)
        )
    present = np.nonzero(cents.counts > 0)[0].astype(np.int32)
    if present.size == 0:
        raise DataError(
            f"{config.dataset} split {split!r}: no labelled pixels, "
            "class-uniform sampling impossible"
        )
    return (
        tf.constant(cents.table, tf.int32),
        tf.constant(cents.offsets, tf.int64),
        tf.constant(present),
    )


# ---------------------------------------------------------------------- datasets
def _finish(ds, batch_size, drop_remainder):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    # Elements are generated from an index stream, not read from files: shard by data.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _eval_map(config):
    long_edge = _eval_long_edge(config)
    upscale = config.eval_upscale

    def prepare(image, label):
        if long_edge:
            image, label = aug.resize_long_edge(image, label, int(long_edge), upscale=upscale)
        return normalize(image), tf.cast(label, tf.int32)

    return prepare


def _eval_long_edge(config):
    long_edge = config.eval_long_edge
    if long_edge is None and config.dataset == "mapillary":
        long_edge = mapillary.DEFAULT_EVAL_LONG_EDGE
    return long_edge


def eval_resized_hw(height: int, width: int, long_edge: Optional[int], upscale: bool = False):
    """The (height, width) an evaluation image of ``height`` x ``width`` reaches the model
    with: :func:`hmsa_keras.data.augment.resize_long_edge` in NumPy (same float32 arithmetic
    and round-half-to-even)."""
    longest = max(height, width)
    if not long_edge or longest == long_edge or (longest < long_edge and not upscale):
        return height, width
    ratio = np.float32(long_edge) / np.float32(longest)
    return tuple(max(1, int(np.round(np.float32(v) * ratio))) for v in (height, width))


def eval_image_sizes(config, split: str, limit: Optional[int] = None):
    """``[(name, (height, width))]``: every evaluation image of ``split`` (the first ``limit``)
    at the size the model sees it (EXIF orientation and ``eval_long_edge`` applied), read from
    file headers only. ``None`` for ``cityscapes_tfds`` (sizes unknown without decoding; its
    images are all 1024x2048). Raises DataError for a missing split or unreadable file."""
    check_config(config)
    long_edge, upscale = _eval_long_edge(config), bool(config.eval_upscale)
    if config.dataset == "cityscapes_tfds":
        return None
    if config.dataset == "synthetic":
        n = synthetic.split_size(config, split)
        n = n if limit is None else min(n, limit)
        hw = eval_resized_hw(*(int(v) for v in config.synthetic_image_size), long_edge, upscale)
        return [(f"synthetic {split} image {i}", hw) for i in range(n)]
    pairs = iter_pairs(config, split)
    if limit is not None:
        pairs = pairs[:limit]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        headers = list(pool.map(lambda pair: read_header(pair[0]), pairs))
    return [(h.path, eval_resized_hw(*h.hw, long_edge, upscale)) for h in headers]


def check_eval_inputs(
    config, split: str, batch_size: int, scales, tile_size=None, max_images: Optional[int] = None
) -> None:
    """Up-front checks of an evaluation (``hmsa-eval``), from file headers only:

    - ``batch_size`` > 1 needs every image of the split at one size (batches are not padded:
      padding would change the predictions, hence the metrics);
    - every image (or tile of ``tile_size``) must be large enough for every scale of
      ``scales`` (:func:`hmsa_keras.conventions.min_size_problem`; refused, never padded).

    Raises DataError with one line naming an offending image, its size and what to do.
    """
    limit = None
    if max_images:
        limit = -(-int(max_images) // max(int(batch_size), 1)) * max(int(batch_size), 1)
    sizes = eval_image_sizes(config, split, limit)
    if not sizes:
        return
    resized = " after the evaluation resize" if _eval_long_edge(config) else ""
    if batch_size > 1:
        first = sizes[0]
        other = next((item for item in sizes if item[1] != first[1]), None)
        if other is not None:
            count = len({hw for _, hw in sizes})
            raise DataError(
                f"{config.dataset} split {split!r}: batch size {batch_size} needs images of one "
                f"size, but they come in {count} sizes{resized} (e.g. {first[0]} is "
                f"{first[1][0]}x{first[1][1]}, {other[0]} is {other[1][0]}x{other[1][1]}, HxW); "
                "use a batch size of 1 (hmsa-eval --batch_size=1)"
            )
    bad = []
    for name, (h, w) in sizes:
        if tile_size is not None:
            h, w = min(h, int(tile_size[0])), min(w, int(tile_size[1]))
        problem = min_size_problem(h, w, scales)
        if problem:
            bad.append(f"{name}: {problem}")
    if bad:
        more = f" (and {len(bad) - 1} more image(s) of split {split!r})" if len(bad) > 1 else ""
        tile = f" (tiles of {tile_size[0]}x{tile_size[1]})" if tile_size is not None else ""
        raise DataError(bad[0] + resized.replace(" after", "; sizes are after") + tile + more)


def build_dataset(
    config,
    split: str,
    training: bool,
    batch_size: int,
    *,
    repeat: Optional[bool] = None,
    drop_remainder: Optional[bool] = None,
) -> tf.data.Dataset:
    """Batches of (normalised float32 [B, H, W, 3], int32 [B, H, W]) labels, 255 = ignore.

    Args:
      config: a :class:`hmsa_keras.config.DataConfig`.
      split: split name ("train", "val", ...).
      training: augmented random crops of ``config.crop_size``, shuffled;
        otherwise full images in file order, not augmented.
      batch_size: global batch size. For evaluation of datasets whose images
        differ in size use 1 (:func:`check_eval_inputs` says so up front).
      repeat: default ``training``. drop_remainder: default ``training``.
    Raises:
      DataError: unknown dataset, missing/empty split, unpaired files, or
        (per ``config.validate``) unreadable or mismatched files.
    """
    check_config(config)
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    if config.dataset == "cityscapes_tfds":
        return _build_stream(config, split, training, batch_size, repeat, drop_remainder)
    if config.dataset == "synthetic":
        if config.pseudo_label_dir and training:
            raise DataError("pseudo_label_dir is supported for file datasets only, not 'synthetic'")
        source = _synthetic_source(config, split)
    else:
        source = _file_source(config, split, training)

    n = source.size
    if not training:
        ds = tf.data.Dataset.range(n).map(
            source.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        ds = ds.map(_eval_map(config), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if repeat:
            ds = ds.repeat()
        return _finish(ds, batch_size, drop_remainder)

    fraction = float(config.class_uniform_fraction or 0.0)
    cents = (
        _centroid_tensors(config, split, source, get_dataset_info(config, split).num_classes)
        if fraction > 0
        else None
    )
    base_seed = tf.constant(int(config.seed), tf.int64)
    pre_size = config.pre_size

    def example(i):
        seed = tf.stack([base_seed, i])
        epoch, pos = i // n, i % n
        index = tf.random.experimental.index_shuffle(pos, tf.stack([base_seed, epoch]), n - 1)
        center = None
        if cents is not None:
            row = sampling.pick_centroid(seed, *cents)
            use = (
                tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 100))
                < fraction
            )
            index = tf.where(use, tf.cast(row[0], tf.int64), index)
            center = tf.where(use, tf.cast(row[1:], tf.float32), tf.constant([-1.0, -1.0]))
        image, label = source.load(index)
        if center is not None:
            # A centre of (-1, -1) means "random crop".
            return tf.cond(
                center[0] >= 0,
                lambda: aug.augment(image, label, seed, config, center, pre_size),
                lambda: aug.augment(image, label, seed, config, pre_size=pre_size),
            )
        return aug.augment(image, label, seed, config, pre_size=pre_size)

    counter = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(n)
    ds = counter.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, batch_size, drop_remainder)


def _build_stream(config, split, training, batch_size, repeat, drop_remainder):
    """cityscapes_tfds: a sequential TFDS stream instead of random access."""
    if training and config.class_uniform_fraction:
        raise DataError(
            "class_uniform_fraction needs random access: use dataset=cityscapes (file layout), "
            "not cityscapes_tfds"
        )
    if training and config.pseudo_label_dir:
        raise DataError(
            "pseudo_label_dir is supported for file datasets only, not 'cityscapes_tfds'"
        )
    ds, n = cityscapes.tfds_dataset(config, split)
    if n == 0:
        raise DataError(f"cityscapes_tfds split {split!r} is empty")
    if not training:
        ds = ds.map(_eval_map(config), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if repeat:
            ds = ds.repeat()
        return _finish(ds, batch_size, drop_remainder)
    if repeat:
        ds = ds.repeat()
    ds = ds.shuffle(_TFDS_SHUFFLE_BUFFER, seed=int(config.seed)).enumerate()
    base_seed = tf.constant(int(config.seed), tf.int64)
    pre_size = config.pre_size

    def example(i, pair):
        return aug.augment(pair[0], pair[1], tf.stack([base_seed, i]), config, pre_size=pre_size)

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, batch_size, drop_remainder)
