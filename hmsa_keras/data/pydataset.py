"""A TensorFlow-free input pipeline: ``keras.utils.PyDataset`` over the synthetic, folder and
CamVid datasets, for ``model.fit`` on any Keras backend (docs/backends.md).

    from hmsa_keras.data.pydataset import SegmentationPyDataset
    train = SegmentationPyDataset(data_cfg, "train", training=True, batch_size=8)
    val = SegmentationPyDataset(data_cfg, "val", training=False, batch_size=1)
    model.fit(train, validation_data=val, epochs=4)

Batches are ``(images float32 [B, H, W, 3] normalised, labels int32 [B, H, W])``, as from
:func:`hmsa_keras.data.build_dataset`; void pixels are :data:`hmsa_keras.conventions.IGNORE_LABEL`.
The readers and the synthetic generator are the NumPy ones of :mod:`hmsa_keras.data`.

Training augmentation is a NumPy subset of :mod:`hmsa_keras.data.augment`, with the same
geometry: a random scale ``s`` in ``[scale_min, scale_max]`` (scaled size ``round(side *
s)``; image bilinear with half-pixel centres, label nearest), a crop window of ``crop_size``
placed uniformly over every position (padding where it leaves the scaled image: the mean
colour, i.e. 0 after normalisation, and the ignore label), then a horizontal flip with
probability 0.5 (``hflip``). Left out (the tf.data pipeline has them): colour jitter, blur,
noise, class-uniform crops, pseudo-label mixing, ``eval_long_edge`` resizing. The random
stream is NumPy's (seeded by ``config.seed``, the epoch and the example), so the crops
differ from tf.data's although their distribution is the same.

Evaluation yields every image once, in file order, at full size; a batch must hold images
of one size (use ``batch_size=1`` for datasets whose sizes differ).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from hmsa_keras.conventions import IGNORE_LABEL, MEAN, STD
from hmsa_keras.data import camvid, folder, synthetic
from hmsa_keras.data.io import DataError, format_problems, load_image_label

DATASETS = ("synthetic", "camvid", "folder")


def normalize(image):
    """uint8/float RGB pixels [0, 255] -> ``(pixel / 255 - MEAN) / STD`` float32 (NumPy)."""
    image = np.asarray(image, np.float32) / np.float32(255.0)
    return (image - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def _axis(offset, out_len, scaled_len, src_len):
    """Bilinear source indices/weights, nearest indices and validity for one crop axis
    (the arithmetic of :func:`hmsa_keras.data.augment._axis_sampling`)."""
    pos = (offset + np.arange(out_len)).astype(np.float32)
    valid = (pos >= 0) & (pos < scaled_len)
    ratio = np.float32(src_len) / np.float32(scaled_len)
    src = np.clip((pos + 0.5) * ratio - 0.5, 0.0, src_len - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, src_len - 1)
    frac = (src - i0).astype(np.float32)
    nearest = np.clip(np.floor((pos + 0.5) * ratio).astype(np.int64), 0, src_len - 1)
    return i0, i1, frac, nearest, valid


def scale_crop_flip(image, label, rng, crop_size, scale_range=(1.0, 1.0), hflip=True):
    """Random scale, crop (with padding) and horizontal flip of one example (see module
    docstring). ``image`` uint8 ``[H, W, 3]``, ``label`` int ``[H, W]``; returns
    (normalised float32 ``[ch, cw, 3]``, int32 ``[ch, cw]``) with the padding at the mean
    colour (0) and :data:`IGNORE_LABEL`."""
    ch, cw = int(crop_size[0]), int(crop_size[1])
    h, w = label.shape
    lo, hi = float(scale_range[0]), float(scale_range[1])
    scale = rng.uniform(lo, hi) if hi > lo else lo
    sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    oy = int(rng.integers(min(0, sh - ch), max(0, sh - ch) + 1))
    ox = int(rng.integers(min(0, sw - cw), max(0, sw - cw) + 1))
    y0, y1, fy, ny, vy = _axis(oy, ch, sh, h)
    x0, x1, fx, nx, vx = _axis(ox, cw, sw, w)
    img = np.asarray(image, np.float32)
    rows = img[y0] * (1.0 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    out = rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    lbl = np.asarray(label, np.int32)[ny][:, nx]
    valid = vy[:, None] & vx[None, :]
    lbl = np.where(valid, lbl, IGNORE_LABEL).astype(np.int32)
    out = normalize(out)
    out[~valid] = 0.0  # the mean colour
    if hflip and rng.uniform() < 0.5:
        out, lbl = out[:, ::-1], lbl[:, ::-1]
    return np.ascontiguousarray(out), np.ascontiguousarray(lbl)


class SegmentationPyDataset(keras.utils.PyDataset):
    """Batches of one split of a ``synthetic``, ``camvid`` or ``folder`` dataset.

    Args:
      config: a :class:`hmsa_keras.config.DataConfig` (fields used: ``dataset``,
        ``data_dir``, ``train_split``, ``synthetic_*``, ``crop_size``, ``scale_min``,
        ``scale_max``, ``hflip``, ``seed``).
      split: split name, e.g. ``"train"``, ``"val"``.
      training: augmented random crops, a new permutation every epoch, the last partial
        batch dropped; else every image once in file order, not augmented.
      batch_size: images per batch (>= 1).
      steps: batches per epoch in training (default: images // batch_size).
      **kwargs: ``keras.utils.PyDataset`` arguments (``workers``, ``use_multiprocessing``,
        ``max_queue_size``).
    Raises:
      DataError: an unsupported dataset, a missing or empty split, unpaired files.
      ValueError: ``batch_size`` < 1.
    """

    def __init__(self, config, split, training, batch_size, steps=None, **kwargs):
        super().__init__(**kwargs)
        if config.dataset not in DATASETS:
            raise DataError(
                f"SegmentationPyDataset reads {DATASETS}, not {config.dataset!r}; "
                "use hmsa_keras.data.build_dataset (tf.data) for it"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config, self.split, self.training = config, split, bool(training)
        self.batch_size = int(batch_size)
        self.seed = int(config.seed)
        self.epoch = 0
        if config.dataset == "synthetic":
            self.info = synthetic.dataset_info(config)
            self.pairs = None
            self.size = synthetic.split_size(config, split)
        else:
            module = camvid if config.dataset == "camvid" else folder
            if not config.data_dir:
                raise DataError(f"dataset {config.dataset!r} needs data_dir")
            self.info = module.dataset_info(config)
            self.pairs, problems = module.list_pairs(config, split)
            if problems:
                raise DataError(format_problems(f"{config.dataset} split {split!r}", problems))
            self.size = len(self.pairs)
        if self.size <= 0:
            raise DataError(f"{config.dataset} split {split!r} is empty")
        if self.training and self.size < self.batch_size:
            raise DataError(
                f"{config.dataset} split {split!r} has {self.size} images, fewer than "
                f"one batch of {self.batch_size}"
            )
        self.steps = int(steps) if steps else None
        self._order = self._permutation()

    @property
    def num_classes(self):
        return self.info.num_classes

    def _load(self, index):
        """(uint8 image [H, W, 3], uint8 training ids [H, W]) of example ``index``."""
        if self.pairs is None:
            size = tuple(int(v) for v in self.config.synthetic_image_size)
            return synthetic.generate(self.seed, self.split, int(index), size)
        return load_image_label(*self.pairs[int(index)], self.info)

    def _permutation(self):
        if not self.training:
            return np.arange(self.size)
        return np.random.default_rng([self.seed & 0xFFFFFFFF, 7, self.epoch]).permutation(self.size)

    def __len__(self):
        if not self.training:
            return math.ceil(self.size / self.batch_size)
        return self.steps or self.size // self.batch_size

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        images, labels = [], []
        for j in range(
            i * self.batch_size,
            min((i + 1) * self.batch_size, self.size)
            if not self.training
            else (i + 1) * self.batch_size,
        ):
            index = self._order[j % self.size]
            image, label = self._load(index)
            if self.training:
                rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 11, self.epoch, j])
                image, label = scale_crop_flip(
                    image,
                    label,
                    rng,
                    self.config.crop_size,
                    (self.config.scale_min, self.config.scale_max),
                    self.config.hflip,
                )
            else:
                image, label = normalize(image), label.astype(np.int32)
            images.append(image)
            labels.append(label)
        shapes = {x.shape for x in images}
        if len(shapes) > 1:
            raise DataError(
                f"{self.config.dataset} split {self.split!r}: batch {i} mixes image sizes "
                f"{sorted(shapes)}; evaluate with batch_size=1"
            )
        return np.stack(images), np.stack(labels)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._permutation()
