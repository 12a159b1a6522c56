"""One worker of a two-worker ``hmsa-train --strategy=multi_worker`` job on 127.0.0.1.

    python fault_driver.py INDEX PORT0 PORT1 MODEL_DIR

Runs the real command-line tool (``hmsa_keras.cli.train``: flags, logging, exit status) with
TF_CONFIG for worker INDEX and a tiny synthetic setup; both workers share MODEL_DIR (a shared
file system). The same command is used for the first run and for the restart. Graph
optimisation is switched off after the strategy is made (these tiny graphs run a few steps).
"""

import json
import os
import sys

index, port0, port1, model_dir = sys.argv[1:5]
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
        "task": {"type": "worker", "index": int(index)},
    }
)

from common import TINY  # noqa: E402  (puts the repository on sys.path)

from hmsa_keras.training import distribute  # noqa: E402

_make_strategy = distribute.make_strategy


def make_strategy(*args, **kwargs):
    strategy = _make_strategy(*args, **kwargs)  # before any other TensorFlow op
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    return strategy


distribute.make_strategy = make_strategy

from hmsa_keras.cli.train import TOOL, main  # noqa: E402

FLAGS = [
    "--strategy=multi_worker",
    f"--model_dir={model_dir}",
    "--dataset=synthetic",
    "--synthetic_image_size=64x64",
    "--synthetic_train_size=16",
    "--synthetic_val_size=2",
    "--crop_size=32x32",
    "--scale_min=0.75",
    "--scale_max=1.25",
    "--fusion=single",
    "--batch_size=2",
    "--epochs=1",
    "--steps_per_epoch=6",
    "--checkpoint_every=2",
    "--image_every=0",
    "--learning_rate=0.01",
    "--seed=3",
] + [f"--{k}={v}" for k, v in TINY.items()]

TOOL.run(main, ["hmsa-train", *FLAGS])
