"""Datasets and the tf.data input pipeline (see docs/data.md).

Public API::

    info = get_dataset_info(config)                       # classes, colours, ignore 255
    ds = build_dataset(config, "train", training=True, batch_size=8)
    pairs = iter_pairs(config, "val")                     # file datasets: (image, label) paths
    image, label = load_image_label(img_path, lbl_path, info)   # numpy, validated
"""

from hmsa_keras.data.io import DataError, load_image_label
from hmsa_keras.data.labels import IGNORE, DatasetInfo
from hmsa_keras.data.pipeline import DATASETS, build_dataset, get_dataset_info, iter_pairs

__all__ = [
    "DATASETS", "DataError", "DatasetInfo", "IGNORE", "build_dataset", "get_dataset_info",
    "iter_pairs", "load_image_label",
]
