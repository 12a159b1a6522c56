"""Class-uniform sampling: per-class centroids of label tiles, cached as JSON.

As in the reference: each label map is cut into ``tile`` x ``tile`` tiles; for
every class present in a tile, the centroid of its pixels there is one
candidate crop centre ``(image index, y, x)``. A class-centred crop draws a
class uniformly among the classes that have centroids, then one of that
class's centroids uniformly, and centres the crop there (see
:func:`pick_centroid`).

Computing centroids reads every label once, so they are cached as JSON in
``config.cache_dir`` if set, else ``~/.cache/hmsa_keras`` (never inside the
data directory, which may be shared and read-only). The cache file name holds
a fingerprint of the label files (absolute paths, sizes, mtimes), the label
table and the tile size, so a changed dataset is never served stale centroids
and several datasets share one cache directory safely.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

CACHE_VERSION = 2  # 2: label files are read as displayed (EXIF orientation applied)


@dataclasses.dataclass
class Centroids:
    """Candidate crop centres grouped by class: ``table[offsets[c]:offsets[c+1]]`` rows
    (index, y, x)."""

    table: np.ndarray  # int32 [N, 3]
    offsets: np.ndarray  # int64 [K + 1]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_json(self):
        return {"table": self.table.tolist(), "offsets": self.offsets.tolist()}

    @classmethod
    def from_json(cls, obj):
        table = np.asarray(obj["table"], np.int32).reshape(-1, 3)
        return cls(table, np.asarray(obj["offsets"], np.int64))


def label_centroids(label: np.ndarray, num_classes: int, tile: int):
    """[(class, y, x)] centroids of each class in each tile of one training-id map."""
    h, w = label.shape
    out = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            block = label[ty : ty + tile, tx : tx + tile].astype(np.int64)
            flat = block.ravel()
            keep = flat < num_classes
            if not keep.any():
                continue
            ids = flat[keep]
            yy, xx = np.indices(block.shape)
            counts = np.bincount(ids, minlength=num_classes)
            sy = np.bincount(ids, weights=yy.ravel()[keep], minlength=num_classes)
            sx = np.bincount(ids, weights=xx.ravel()[keep], minlength=num_classes)
            for c in np.nonzero(counts)[0]:
                out.append(
                    (int(c), int(round(ty + sy[c] / counts[c])), int(round(tx + sx[c] / counts[c])))
                )
    return out


def compute_centroids(
    num_items: int,
    load_label: Callable[[int], np.ndarray],
    num_classes: int,
    tile: int,
    workers: int = 4,
) -> Centroids:
    """Centroids over ``num_items`` labels, ``load_label(i)`` giving training ids."""

    def one(i):
        return [(c, i, y, x) for c, y, x in label_centroids(load_label(i), num_classes, tile)]

    rows = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for part in pool.map(one, range(num_items)):
            rows.extend(part)
    rows.sort()
    classes = np.asarray([r[0] for r in rows], np.int64)
    table = np.asarray([r[1:] for r in rows], np.int32).reshape(-1, 3)
    offsets = np.searchsorted(classes, np.arange(num_classes + 1)).astype(np.int64)
    return Centroids(table, offsets)


def fingerprint(label_paths: Sequence[str], lut: Optional[np.ndarray], tile: int) -> str:
    digest = hashlib.sha1(f"v{CACHE_VERSION}:{tile}".encode())
    if lut is not None:
        digest.update(np.asarray(lut, np.int32).tobytes())
    for path in label_paths:
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_directory(config) -> str:
    """Where centroid caches go: ``config.cache_dir``, else ``~/.cache/hmsa_keras``; created if
    needed.

    The default deliberately never writes into the data directory: data is
    often shared and meant read-only, and permission bits do not stop root.
    """
    path = config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hmsa_keras")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"{path}: cannot create the centroid cache directory ({exc}); set DataConfig.cache_dir"
        ) from None
    return path


def cached_centroids(config, split: str, pairs, lut, load_label, num_classes: int) -> Centroids:
    """Centroids of ``pairs``' labels, read from / written to the JSON cache."""
    tile = int(config.class_uniform_tile)
    key = fingerprint([p[1] for p in pairs], lut, tile)
    path = os.path.join(
        cache_directory(config), f"centroids_{config.dataset}_{split}_t{tile}_{key[:16]}.json"
    )
    if os.path.isfile(path):
        try:
            with open(path) as f:
                obj = json.load(f)
            if obj.get("fingerprint") == key:
                return Centroids.from_json(obj)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: recompute
    cents = compute_centroids(len(pairs), load_label, num_classes, tile)
    obj = {
        "version": CACHE_VERSION,
        "fingerprint": key,
        "dataset": config.dataset,
        "split": split,
        "tile": tile,
        "num_images": len(pairs),
        **cents.to_json(),
    }
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
    return cents


def pick_centroid(seed, centroids_table, offsets, present):
    """In-graph draw: a class uniformly among ``present``, then one of its centroids.

    Returns int32 (index, y, x). ``seed`` is an int [2] stateless seed.
    """
    import tensorflow as tf

    s1 = tf.random.experimental.stateless_fold_in(seed, 101)
    s2 = tf.random.experimental.stateless_fold_in(seed, 102)
    k = tf.random.stateless_uniform(
        [], s1, 0, tf.shape(present, out_type=tf.int32)[0], dtype=tf.int32
    )
    cls = tf.gather(present, k)
    start, stop = tf.gather(offsets, cls), tf.gather(offsets, cls + 1)
    j = start + tf.random.stateless_uniform([], s2, 0, 2**31 - 1, dtype=tf.int64) % (stop - start)
    return tf.gather(centroids_table, j)
