"""One worker of a two-worker MultiWorkerMirroredStrategy run of the real trainer.

    python multiworker_driver.py INDEX PORT0 PORT1 MODEL_DIR OUT.npz

Sets TF_CONFIG for worker INDEX on 127.0.0.1, makes the strategy before any other TF op,
runs ``hmsa_keras.training.trainer.train`` on a tiny synthetic setup and saves the final
weights of the trained model (and the trainer's result) to OUT.npz.
"""

import json
import os
import sys

index, port0, port1, model_dir, out_path = sys.argv[1:6]
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
        "task": {"type": "worker", "index": int(index)},
    }
)

from common import TINY  # noqa: E402

from hmsa_keras.training.distribute import make_strategy  # noqa: E402

strategy = make_strategy("multi_worker")  # before any other TensorFlow op

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

import hmsa_keras.training.checkpoints as checkpoints  # noqa: E402
from hmsa_keras.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from hmsa_keras.training.trainer import train  # noqa: E402

captured = {}
_save = checkpoints.save_keras_atomic


def spy(model, path, chief=True):
    captured["model"] = model
    return _save(model, path, chief)


checkpoints.save_keras_atomic = spy

model_cfg = ModelConfig(**TINY)
data_cfg = DataConfig(
    dataset="synthetic",
    crop_size=(32, 32),
    synthetic_image_size=(64, 64),
    synthetic_train_size=16,
    synthetic_val_size=4,
    scale_min=0.75,
    scale_max=1.25,
    seed=3,
)
train_cfg = TrainConfig(
    model_dir=model_dir,
    batch_size=2,
    epochs=1,
    steps_per_epoch=3,
    learning_rate=0.01,
    checkpoint_every=2,
    image_every=0,
    strategy="multi_worker",
)
result = train(model_cfg, data_cfg, train_cfg, strategy)
model = captured["model"]
np.savez(
    out_path,
    names=np.array([v.path for v in model.weights]),
    result=json.dumps(result),
    replicas=strategy.num_replicas_in_sync,
    **{f"w:{v.path}": np.asarray(v.numpy()) for v in model.weights},
)
print("WORKER_DONE", index, flush=True)
