"""Cityscapes (fine annotations), 19 training classes.

File layout (the official one)::

    data_dir/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    data_dir/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (if present)
    data_dir/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png        (otherwise)

``*_labelTrainIds.png`` (written by cityscapesScripts' createTrainIdLabelImgs)
already hold trainIds; ``*_labelIds.png`` are mapped with the official table in
:mod:`hmsa_keras.data.labels`. A split must use one kind consistently.

``cityscapes_tfds`` reads the TFDS ``cityscapes/semantic_segmentation`` builder
(the two official zips in a manual dir) and maps its ``segmentation_label``
labelIds in the graph with the same table.
"""

from __future__ import annotations

import os

from hmsa_keras.data.io import DataError
from hmsa_keras.data.labels import (
    CITYSCAPES_NUM_CLASSES,
    IGNORE,
    DatasetInfo,
    cityscapes_label_id_lut,
    cityscapes_train_classes,
    identity_lut,
)

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TFDS_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def _label_kind(config, split):
    """'train_ids' if the split has *_labelTrainIds.png files, else 'label_ids'."""
    gt = os.path.join(config.data_dir, "gtFine", split)
    if os.path.isdir(gt):
        for city in sorted(os.listdir(gt)):
            city_dir = os.path.join(gt, city)
            if os.path.isdir(city_dir) and any(
                f.endswith(TRAIN_IDS_SUFFIX) for f in os.listdir(city_dir)
            ):
                return "train_ids"
    return "label_ids"


def dataset_info(config, split=None, kind=None) -> DatasetInfo:
    """19-class info; ``lut`` reads trainId or labelId files (``kind``, default: detected)."""
    names, colors = cityscapes_train_classes()
    if kind is None:
        kind = _label_kind(config, split or config.train_split)
    lut = identity_lut(CITYSCAPES_NUM_CLASSES) if kind == "train_ids" else cityscapes_label_id_lut()
    return DatasetInfo(config.dataset, CITYSCAPES_NUM_CLASSES, IGNORE, names, colors, lut)


def list_pairs(config, split):
    """(pairs, problems) for one split, walking every city folder."""
    img_root = os.path.join(config.data_dir, "leftImg8bit", split)
    gt_root = os.path.join(config.data_dir, "gtFine", split)
    problems = [
        f"{d}: directory does not exist" for d in (img_root, gt_root) if not os.path.isdir(d)
    ]
    if problems:
        return [], problems
    suffix = TRAIN_IDS_SUFFIX if _label_kind(config, split) == "train_ids" else LABEL_IDS_SUFFIX
    pairs = []
    for city in sorted(os.listdir(img_root)):
        city_dir = os.path.join(img_root, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith(IMAGE_SUFFIX):
                continue
            stem = name[: -len(IMAGE_SUFFIX)]
            label = os.path.join(gt_root, city, stem + suffix)
            if os.path.isfile(label):
                pairs.append((os.path.join(city_dir, name), label))
            else:
                problems.append(f"{os.path.join(city_dir, name)}: no label file (expected {label})")
    return pairs, problems


def tfds_dataset(config, split):
    """(tf.data of (uint8 image, uint8 train ids), number of examples or None) from TFDS."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tfds_split = TFDS_SPLITS.get(split, split)
    manual_dir = config.tfds_manual_dir or config.data_dir
    try:
        builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=config.data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
        ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
    except Exception as exc:  # missing zips, unknown split, ...
        raise DataError(
            f"cityscapes_tfds split {split!r} (data_dir={config.data_dir}, "
            f"manual_dir={manual_dir}): {exc.__class__.__name__}: {exc}"
        ) from None
    try:
        num = int(builder.info.splits[tfds_split].num_examples)
    except Exception:  # e.g. under tfds.testing.mock_data: unknown
        num = None
    lut = tf.constant(cityscapes_label_id_lut(), tf.int32)

    def convert(example):
        raw = tf.cast(example["segmentation_label"][..., 0], tf.int32)
        mapped = tf.gather(lut, raw)
        check = tf.debugging.Assert(
            tf.reduce_all(mapped >= 0),
            [
                "cityscapes_tfds: label ids outside the Cityscapes table in",
                example.get("image_id", "?"),
            ],
        )
        with tf.control_dependencies([check]):
            label = tf.cast(mapped, tf.uint8)
        return tf.cast(example["image_left"], tf.uint8), label

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), num


__all__ = ["dataset_info", "list_pairs", "tfds_dataset"]
