"""A shared test harness for Keras models (keras-hub style): serialization round trips.

Generic over the model: give a ``builder`` (a callable returning a freshly built model, e.g.
``lambda: HMSA(4, **TINY)``) and an ``inputs`` batch. Outputs may be a tensor or any nest
(dict, list) of tensors; they are compared leaf by leaf. Backend-agnostic (``keras.ops``),
so the same checks run under TensorFlow and JAX.

    from tests.model_harness import run_standard_checks
    run_standard_checks(lambda: HMSA(4, **TINY), images, tmp_path)

Checks:
- :func:`check_config_round_trip`: ``from_config(get_config())`` builds an equal config, and
  the config survives ``keras.saving.serialize_keras_object``/``deserialize_keras_object``;
- :func:`check_keras_file_round_trip`: ``.keras`` save/reload gives identical outputs,
  weights and config;
- :func:`check_weights_file_round_trip`: a model rebuilt from the config starts with
  different outputs (so the check can fail) and matches exactly after ``load_weights``.
"""

from __future__ import annotations

import os

import keras
import numpy as np


def outputs_of(model, inputs, **kwargs):
    """The model's outputs on ``inputs`` as a flat list of NumPy arrays (nest order)."""
    return [
        np.asarray(keras.ops.convert_to_numpy(x))
        for x in keras.tree.flatten(model(inputs, **kwargs))
    ]


def assert_same_outputs(a, b, atol=0.0, what="outputs"):
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} tensors"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{i}]: shape {x.shape} vs {y.shape}"
        if atol:
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=f"{what}[{i}]")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{what}[{i}]")


def check_config_round_trip(model):
    """``cls.from_config(model.get_config())`` has the same config, also through Keras'
    serialization of the whole object. Returns the clone."""
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(revived) is type(model) and revived.get_config() == config
    return clone


def check_keras_file_round_trip(model, inputs, directory, atol=0.0):
    """``model.save(.keras)`` then ``keras.models.load_model``: same outputs, weights, config.
    Returns the path of the file."""
    path = os.path.join(str(directory), "harness_model.keras")
    reference = outputs_of(model, inputs)
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert_same_outputs(outputs_of(loaded, inputs), reference, atol, "reloaded .keras outputs")
    return path


def check_weights_file_round_trip(model, inputs, directory, builder=None, atol=0.0):
    """``save_weights`` into a model rebuilt by ``builder`` (default: from the config):
    its outputs differ before ``load_weights`` and are identical after."""
    path = os.path.join(str(directory), "harness_model.weights.h5")
    reference = outputs_of(model, inputs)
    model.save_weights(path)
    other = builder() if builder is not None else type(model).from_config(model.get_config())
    before = outputs_of(other, inputs)
    assert any(np.abs(x - y).max() > 0 for x, y in zip(before, reference)), (
        "a freshly built model already gives the same outputs: the check could not fail"
    )
    other.load_weights(path)
    assert_same_outputs(outputs_of(other, inputs), reference, atol, "outputs after load_weights")


def run_standard_checks(builder, inputs, directory, atol=0.0):
    """All three checks on ``builder()``; returns the built model."""
    model = builder()
    check_config_round_trip(model)
    check_keras_file_round_trip(model, inputs, directory, atol)
    check_weights_file_round_trip(model, inputs, directory, builder, atol)
    return model
