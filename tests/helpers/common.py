"""Shared bits of the driver scripts: fast graph building, tiny model, logical CPUs.

Imported by the drivers before TensorFlow runs any op; keep TF calls inside functions.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The one tiny-model configuration of the test suite (conftest, drivers and test files import it):
# MobileNetV2 x0.35 with 16-channel heads, built in seconds on a 2-core CPU.
TINY = dict(
    alpha=0.35, aspp_channels=16, decoder_channels=16, attention_channels=16, low_level_channels=8
)


# The console scripts of setup.py, in the order of cli_tools()
TOOL_NAMES = (
    "hmsa-train",
    "hmsa-eval",
    "hmsa-predict",
    "hmsa-autolabel",
    "hmsa-export",
    "hmsa-data",
    "hmsa-convert",
)


def cli_tools():
    """{console script name: its ``hmsa_keras.cli.tool.Tool``}, for every ``hmsa-*`` tool
    (the keys are :data:`TOOL_NAMES`)."""
    from hmsa_keras.cli import convert, data, eval, export, predict, train

    return {
        "hmsa-train": train.TOOL,
        "hmsa-eval": eval.TOOL,
        "hmsa-predict": predict.TOOL,
        "hmsa-autolabel": predict.AUTOLABEL_TOOL,
        "hmsa-export": export.TOOL,
        "hmsa-data": data.TOOL,
        "hmsa-convert": convert.TOOL,
    }


def setup_tf(logical_cpus=0):
    """Logical CPU devices (before any op) and no grappler: these tiny graphs are traced
    once and run a few steps, so graph optimisation costs more than it saves."""
    import tensorflow as tf

    if logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    return tf


def weights_of(model):
    import numpy as np

    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def find_layer(model, name):
    import keras

    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = find_layer(layer, name)
            if found is not None:
                return found
    return None
