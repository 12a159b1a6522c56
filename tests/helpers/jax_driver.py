"""The JAX side of tests/test_backends.py, in a process where TensorFlow cannot be imported
(as on a machine without it): KERAS_BACKEND=jax, every ``import tensorflow`` raises.

    KERAS_BACKEND=jax python jax_driver.py MODEL.keras BATCH.npz OUT_DIR

1. loads MODEL.keras (saved under TensorFlow) and writes, for BATCH.npz's images, each
   scale's logits / attention / aux logits and every chain's fused logits, classes and
   attention (flip-TTA), the loss terms and the gradients of the loss on BATCH's labels;
2. one ``model.fit`` step: the training loss on the batch before and after; then two
   ``fit`` steps on the TensorFlow-free ``SegmentationPyDataset``; saves the trained model
   as OUT_DIR/jax_trained.keras with its outputs;
3. ``hmsa_keras.build_model`` from scratch (its parameter count);
4. checks that no TensorFlow module was imported, and records the phases' times.
Writes OUT_DIR/jax.npz and prints one JSON line of timings.
"""

import json
import os
import sys
import time


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked in this process (a machine without TensorFlow)")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
assert os.environ.get("KERAS_BACKEND") == "jax", "run with KERAS_BACKEND=jax"

import numpy as np  # noqa: E402

TIMES = {}
_start = time.perf_counter()


def lap(name):
    global _start
    now = time.perf_counter()
    TIMES[name] = round(now - _start, 2)
    _start = now


import jax  # noqa: E402
import keras  # noqa: E402

import hmsa_keras  # noqa: E402
import hmsa_keras.losses  # noqa: E402,F401
import hmsa_keras.metrics  # noqa: E402,F401
import hmsa_keras.models  # noqa: E402,F401
from hmsa_keras.config import DataConfig  # noqa: E402
from hmsa_keras.data.pydataset import SegmentationPyDataset  # noqa: E402

CHAINS = [(1.0,), (0.5, 1.0), (0.5, 1.0, 2.0)]
TINY = dict(
    alpha=0.35, aspp_channels=16, decoder_channels=16, attention_channels=16, low_level_channels=8
)


def _values(model):
    return [
        [v.value for v in vs]
        for vs in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.metrics_variables,
            model.optimizer.variables,
        )
    ]


def make_loss_and_grads(model):
    """The fit step's own loss function (Keras' JAX trainer), its gradients and the loss
    terms, jitted with the variables as arguments (once per value of ``training``: BatchNorm
    with batch statistics, as in fit, or with the moving statistics)."""

    def fn(state, x, y, training):
        grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
        (loss, _), grads = grad_fn(
            state[0],
            state[1],
            state[2],
            x,
            y,
            None,
            training=training,
            optimizer_variables=state[3],
        )
        y_pred, _ = model.stateless_call(state[0], state[1], x, training=training)
        terms = {
            n: hmsa_keras.models.hmsa.local_mean(t) for n, t in model.loss_terms(y, y_pred).items()
        }
        return loss, terms, grads

    jitted = jax.jit(fn, static_argnames=("training",))

    def run(x, y, training=True):
        loss, terms, grads = jitted(_values(model), x, y, training=training)
        return float(loss), {n: float(v) for n, v in terms.items()}, [np.asarray(g) for g in grads]

    return run


def make_outputs(model):
    """Each scale's outputs and every chain's results (flip, details), jitted once with the
    variables as arguments (so the same compiled function serves before and after training)."""
    variables = model.trainable_variables + model.non_trainable_variables

    def fn(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            scales = model.run_scales(x, (0.5, 1.0, 2.0))
            chains = model.segment_chains(x, CHAINS, flip=True, return_details=True)
            return scales, chains, model(x)["logits"]

    jitted = jax.jit(fn)

    def run(x, prefix, out):
        scales, chains, call = jitted([v.value for v in variables], x)
        for s, (logits, attn, aux) in scales.items():
            out[f"{prefix}scale/{s:g}/logits"] = np.asarray(logits)
            out[f"{prefix}scale/{s:g}/attention_logits"] = np.asarray(attn)
            if aux is not None:
                out[f"{prefix}scale/{s:g}/aux_logits"] = np.asarray(aux)
        for chain, res in zip(CHAINS, chains):
            name = ",".join(f"{s:g}" for s in chain)
            out[f"{prefix}chain/{name}/logits"] = np.asarray(res["logits"])
            out[f"{prefix}chain/{name}/classes"] = np.asarray(res["classes"])
            for s, a in res["attention"].items():
                out[f"{prefix}chain/{name}/attention/{s:g}"] = np.asarray(a)
        out[f"{prefix}call/logits"] = np.asarray(call)

    return run


def main(model_path, batch_path, out_dir):
    batch = np.load(batch_path)
    x, y = batch["images"], batch["labels"]
    out = {}
    lap("imports")
    model = hmsa_keras.load_model(model_path)
    lap("load_model")
    outputs = make_outputs(model)
    outputs(x, "", out)
    lap("inference")

    model.compile(optimizer=keras.optimizers.SGD(float(batch["learning_rate"])))
    model.optimizer.build(model.trainable_variables)
    loss_and_grads = make_loss_and_grads(model)
    out["grad_names"] = np.array([v.path for v in model.trainable_variables])
    for training in (False, True):
        loss, terms, grads = loss_and_grads(x, y, training)
        out[f"loss/{training}"], out[f"terms/{training}"] = loss, json.dumps(terms)
        for v, g in zip(model.trainable_variables, grads):
            out[f"grad/{training}:{v.path}"] = g
    lap("loss_and_grads")

    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    out["fit_logs"] = json.dumps({k: float(v[-1]) for k, v in history.items()})
    out["loss_after_step"] = loss_and_grads(x, y, True)[0]
    lap("fit_step")
    # two more steps on the TensorFlow-free pipeline (same batch shape: no new compilation)
    data = DataConfig(
        dataset="synthetic",
        synthetic_train_size=4,
        synthetic_image_size=x.shape[1:3],
        crop_size=x.shape[1:3],
    )
    history = model.fit(
        SegmentationPyDataset(data, "train", training=True, batch_size=len(x)), epochs=1, verbose=0
    ).history
    out["pydataset_fit_loss"] = float(history["loss"][-1])
    lap("pydataset_fit")
    model.save(os.path.join(out_dir, "jax_trained.keras"))
    outputs(x, "trained/", out)
    lap("save_trained")

    out["fresh_params"] = hmsa_keras.build_model(num_classes=4, **TINY).count_params()
    lap("fresh_build")

    out["tensorflow_modules"] = json.dumps(
        sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
    )
    out["times"] = json.dumps(TIMES)
    np.savez(os.path.join(out_dir, "jax.npz"), **out)
    print(json.dumps(TIMES))


if __name__ == "__main__":
    main(*sys.argv[1:4])
