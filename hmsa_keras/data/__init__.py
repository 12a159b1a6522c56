"""Datasets and the tf.data input pipeline (see docs/data.md).

Public API::

    info = get_dataset_info(config)                       # classes, colours, ignore 255
    ds = build_dataset(config, "train", training=True, batch_size=8)
    pairs = iter_pairs(config, "val")                     # file datasets: (image, label) paths
    image, label = load_image_label(img_path, lbl_path, info)   # numpy, validated
"""

from hmsa_keras.data.io import DataError, load_image_label
from hmsa_keras.data.labels import IGNORE, DatasetInfo

_PIPELINE = ("DATASETS", "build_dataset", "get_dataset_info", "iter_pairs")


def __getattr__(name):
    # The tf.data pipeline imports TensorFlow: load it on first use, so that the NumPy
    # modules of this package (and hmsa_keras.data.pydataset) work without TensorFlow.
    if name in _PIPELINE:
        from hmsa_keras.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "IGNORE",
    "build_dataset",
    "get_dataset_info",
    "iter_pairs",
    "load_image_label",
]
