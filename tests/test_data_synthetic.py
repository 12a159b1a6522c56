"""The synthetic street scenes: deterministic, and with large, thin and small structures."""

import numpy as np

from hmsa_keras.config import DataConfig
from hmsa_keras.data import build_dataset, get_dataset_info
from hmsa_keras.data import synthetic as S


def components(mask):
    """Sizes of 4-connected components of a boolean mask (iterative min-label propagation)."""
    h, w = mask.shape
    big = h * w + 1
    ids = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        p = np.pad(ids, 1, constant_values=big)
        new = np.minimum.reduce([ids, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        new = np.where(mask, new, big)
        if np.array_equal(new, ids):
            break
        ids = new
    return np.unique(ids[mask], return_counts=True)[1]


def test_deterministic_and_split_dependent():
    a, b = S.generate(0, "train", 5), S.generate(0, "train", 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], S.generate(0, "val", 5)[0])
    assert not np.array_equal(a[0], S.generate(1, "train", 5)[0])
    assert a[0].shape == (128, 128, 3) and a[0].dtype == np.uint8 and a[1].dtype == np.uint8
    img, lbl = S.generate(0, "train", 0, size=(96, 160))
    assert img.shape == (96, 160, 3) and lbl.shape == (96, 160)


def test_scene_statistics_have_large_thin_and_small_structures():
    labels = [S.generate(0, "train", i)[1] for i in range(24)]
    stack = np.stack(labels)
    share = np.bincount(stack.ravel(), minlength=10) / stack.size
    assert set(np.unique(stack)) == set(range(10))  # every class appears
    # Large smooth regions.
    for cls in (S.SKY, S.BUILDING, S.ROAD, S.SIDEWALK):
        assert share[cls] > 0.05, (S.CLASS_NAMES[cls], share[cls])
    # Thin structures: poles and lane markings are mostly 1-4 px wide.
    for cls in (S.POLE, S.LANE):
        runs = []
        for lbl in labels:
            m = np.pad((lbl == cls).astype(np.int8), ((0, 0), (1, 1)))
            d = np.diff(m, axis=1)
            starts, ends = np.nonzero(d == 1), np.nonzero(d == -1)
            runs.extend((ends[1] - starts[1]).tolist())
        assert np.median(runs) <= 4, S.CLASS_NAMES[cls]
    # Small objects at many sizes: car and person blobs from a few px to hundreds.
    for cls in (S.CAR, S.PERSON):
        sizes = np.concatenate([components(lbl == cls) for lbl in labels])
        assert sizes.min() <= 30 and sizes.max() >= 600, (
            S.CLASS_NAMES[cls],
            sizes.min(),
            sizes.max(),
        )
        assert len(sizes) >= 24


def test_synthetic_pipeline_shapes_and_info():
    config = DataConfig(synthetic_train_size=8, synthetic_val_size=3, crop_size=(64, 96))
    info = get_dataset_info(config)
    assert info.num_classes == 10 and len(info.colors) == 10 and info.class_names[0] == "sky"
    val = list(build_dataset(config, "val", training=False, batch_size=2))
    assert [x.shape[0] for x, _ in val] == [2, 1]
    np.testing.assert_array_equal(val[0][1][1].numpy(), S.generate(0, "val", 1)[1])
    x, y = next(iter(build_dataset(config, "train", training=True, batch_size=3)))
    assert x.shape == (3, 64, 96, 3) and y.shape == (3, 64, 96)
