"""Warm starts (hmsa_keras/training/warm_start.py): sources, matching by name and shape, errors."""

import json
import os
import zipfile

import numpy as np
import pytest

from tests.conftest import TINY


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """A 'run directory': a 4-class model with an auxiliary head (best.keras + config.json)."""
    import keras

    import hmsa_keras
    from hmsa_keras.config import ModelConfig, to_json

    keras.utils.set_random_seed(1)
    model = hmsa_keras.build_model(num_classes=4, aux_head=True, **TINY)
    for v in model.weights:  # distinctive values, so that a copied tensor is recognisable
        v.assign(
            np.random.default_rng(len(v.path)).standard_normal(v.shape).astype(np.float32) * 0.01
            + 3.0
        )
    folder = tmp_path_factory.mktemp("source_run")
    model.save(folder / "best.keras")
    model.save_weights(folder / "model.weights.h5")
    (folder / "config.json").write_text(to_json(ModelConfig(num_classes=4, aux_head=True, **TINY)))
    return folder, {v.path: v.numpy() for v in model.weights}


_TARGETS = {}


def _target(num_classes=5, **kw):
    """A tiny HMSA model at its initial weights (built once per configuration, reset on reuse)."""
    import keras

    import hmsa_keras

    key = (num_classes, tuple(sorted(kw.items())))
    if key not in _TARGETS:
        keras.utils.set_random_seed(2)
        model = hmsa_keras.build_model(num_classes=num_classes, **{**TINY, **kw})
        _TARGETS[key] = (model, model.get_weights())
    model, initial = _TARGETS[key]
    model.set_weights(initial)
    return model, {v.path: v.numpy() for v in model.weights}


def _small_model():
    import keras

    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Dense(2, name="dense_a")(inp))


def test_run_directory_loads_by_name_and_reports_skips(source_dir):
    from hmsa_keras.training.warm_start import warm_start

    folder, src = source_dir
    model, before = _target(num_classes=5)  # other classifier, no auxiliary head
    report = warm_start(model, str(folder))
    assert report.source.endswith("best.keras")
    after = {v.path: v.numpy() for v in model.weights}
    mismatched = {p for p, _, _ in report.mismatched}
    assert mismatched == {"seg_out/kernel", "seg_out/bias"}
    assert dict((p, (a, b)) for p, a, b in report.mismatched)["seg_out/kernel"] == (
        (1, 1, 16, 4),
        (1, 1, 16, 5),
    )
    assert not report.absent  # everything of the target exists in the source
    assert set(report.unused) == {p for p in src if p.startswith("aux_")}
    assert len(report.loaded) == len(after) - 2
    for path in report.loaded:
        np.testing.assert_array_equal(after[path], src[path], err_msg=path)
    for path in mismatched:  # kept at its own initial value
        np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    assert any("moving_mean" in p for p in report.loaded)  # BatchNorm statistics travel too
    assert report.groups["trunk"][0] == report.groups["trunk"][1] > 100
    assert report.groups["attention"][0] == report.groups["attention"][1]
    assert report.groups["seg_head"] == (
        report.groups["seg_head"][1] - 2,
        report.groups["seg_head"][1],
    )
    text = report.summary()
    assert f"loaded {len(report.loaded)} of {len(after)} tensors" in text
    assert "seg_out/kernel (1, 1, 16, 4) in the source, (1, 1, 16, 5) here" in text


def test_absent_layers_keep_their_initial_values(source_dir):
    """Source without the auxiliary head, target with it: the aux tensors are reported absent."""
    import hmsa_keras
    from hmsa_keras.training.warm_start import match_weights

    folder, _ = source_dir
    source = hmsa_keras.build_model(num_classes=4, **TINY)
    model, before = _target(num_classes=4, aux_head=True)
    report = match_weights(model, source, "no-aux source")
    assert set(report.absent) == {p for p in before if p.startswith("aux_")} and report.absent
    after = {v.path: v.numpy() for v in model.weights}
    for path in report.absent:
        np.testing.assert_array_equal(after[path], before[path])
    assert not report.mismatched and len(report.loaded) == len(before) - len(report.absent)


def test_matching_is_by_name_not_by_order():
    import keras

    from hmsa_keras.training.warm_start import match_weights

    def model(order):
        x = inp = keras.Input((3,))
        outs = []
        for name in order:  # same shapes, built in another order
            outs.append(keras.layers.Dense(3, name=name)(x))
        return keras.Model(inp, outs)

    source, target = model(["first", "second"]), model(["second", "first"])
    for i, v in enumerate(source.weights):
        v.assign(np.full(v.shape, float(i + 1), np.float32))
    report = match_weights(target, source)
    assert len(report.loaded) == 4
    src = {v.path: v.numpy() for v in source.weights}
    for v in target.weights:
        np.testing.assert_array_equal(v.numpy(), src[v.path], err_msg=v.path)
    # positionally the first kernel of the target is "second": it must hold second's values
    assert (
        target.weights[0].path.startswith("second")
        and target.weights[0].numpy()[0, 0] == src["second/kernel"][0, 0]
    )


def test_weights_file_beside_a_config_loads_across_class_counts(source_dir):
    from hmsa_keras.training.warm_start import warm_start

    folder, src = source_dir
    model, _ = _target(num_classes=5)
    report = warm_start(model, str(folder / "model.weights.h5"))
    assert {p for p, _, _ in report.mismatched} == {"seg_out/kernel", "seg_out/bias"}
    after = {v.path: v.numpy() for v in model.weights}
    np.testing.assert_array_equal(after["Conv1/kernel"], src["Conv1/kernel"])


@pytest.mark.slow
def test_bare_weights_file_of_the_same_architecture(source_dir, tmp_path):
    import shutil

    from hmsa_keras.training.warm_start import WarmStartError, warm_start

    folder, src = source_dir
    shutil.copy(
        folder / "model.weights.h5", tmp_path / "bare.weights.h5"
    )  # no config.json beside it
    model, _ = _target(num_classes=4, aux_head=True)
    report = warm_start(model, str(tmp_path / "bare.weights.h5"))
    assert not report.mismatched and not report.absent and len(report.loaded) == len(src)
    other, _ = _target(num_classes=5)  # another architecture: the file cannot be placed by name
    with pytest.raises(WarmStartError, match=r"bare\.weights\.h5.*\.keras file or a run directory"):
        warm_start(other, str(tmp_path / "bare.weights.h5"))


def test_converted_checkpoint_directory_and_trunk_weights_never_opened(source_dir, tmp_path):
    """A converted checkpoint (model.keras + config.json) whose config names a trunk weights
    file of another machine: the stored weights are used, the trunk file is never opened."""
    from hmsa_keras.training.warm_start import warm_start

    folder, src = source_dir
    converted = tmp_path / "converted"
    converted.mkdir()
    with (
        zipfile.ZipFile(folder / "best.keras") as z,
        zipfile.ZipFile(converted / "model.keras", "w") as out,
    ):
        for item in z.infolist():
            data = z.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["weights"] = "/nonexistent/mobilenet_v2_weights.h5"
                data = json.dumps(config)
            out.writestr(item, data)
    (converted / "config.json").write_text((folder / "config.json").read_text())
    model, _ = _target(num_classes=4, aux_head=True)
    report = warm_start(model, str(converted))
    assert report.source.endswith("model.keras") and len(report.loaded) == len(src)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", r"no such file or directory \(expected a run directory"),
        ("empty_dir", r"holds none of best\.keras, last\.keras, model\.keras"),
        ("wrong_ext", r"not a \.keras or \.weights\.h5 file"),
        ("corrupt_keras", r"cannot read the \.keras file"),
        ("corrupt_h5", r"not a readable HDF5 weights file"),
    ],
)
def test_bad_sources_name_the_path_and_what_was_expected(tmp_path, case, pattern):
    from hmsa_keras.training.warm_start import WarmStartError, warm_start

    path = (
        tmp_path
        / {
            "missing": "nope",
            "empty_dir": "run",
            "wrong_ext": "model.pth",
            "corrupt_keras": "broken.keras",
            "corrupt_h5": "broken.weights.h5",
        }[case]
    )
    if case == "empty_dir":
        path.mkdir()
        (path / "history.json").write_text("[]")
    elif case != "missing":
        path.write_bytes(os.urandom(256))
    model = _small_model()
    before = {v.path: v.numpy() for v in model.weights}
    with pytest.raises(WarmStartError) as info:
        warm_start(model, str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert __import__("re").search(pattern, message), message
    for v in model.weights:  # nothing was touched
        np.testing.assert_array_equal(v.numpy(), before[v.path])


def test_nothing_matching_is_an_error(tmp_path):
    import keras

    from hmsa_keras.training.warm_start import WarmStartError, warm_start

    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(3, name="unrelated")(inp)).save(tmp_path / "other.keras")
    model = _small_model()
    with pytest.raises(
        WarmStartError, match=r"other\.keras: no tensor matches this model by layer name and shape"
    ):
        warm_start(model, str(tmp_path / "other.keras"))
