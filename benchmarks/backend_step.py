"""The tiny HMSA training step under each Keras backend, and the gradients of one step
across code versions and backends (docs/backends.md).

    python benchmarks/backend_step.py speed [--rounds=5] [--steps=8] [--backends=tensorflow,jax]
                                            [--code=NAME=PATH ...]
    python benchmarks/backend_step.py parity [--backends=tensorflow,jax] [--code=NAME=PATH ...]

The model is the quickstart's (MobileNetV2 alpha 0.35, 64-channel heads, hierarchical
0.5 + 1.0, cross-entropy with the 0.05 per-scale terms), a batch of 8 at 128x128, 8 classes,
SGD with momentum 0.9. ``--code`` names a checkout whose ``hmsa_keras`` is imported
(default: this one, ``new``), optionally with its backends, e.g.
``--code=old=/path/to/older/checkout@tensorflow --code=new=.``; every (code, backend) pair
runs in its own process.

speed: one long-lived worker process per pair builds the model and compiles ``model.fit``'s
step (two warm-up steps), then the workers take turns, round by round in rotating order,
each timing ``--steps`` ``fit`` steps (a callback reads the loss after every step, so the
time includes finishing the step). Prints every pair's median step time and, per round,
its ratio to the first pair's.

parity: the first pair builds the model (seed 0), saves its weights and the gradients of
the training loss on a fixed batch (TensorFlow: ``compute_loss_terms`` under a tape;
JAX: ``compute_loss_and_updates`` under ``jax.value_and_grad``, as ``fit`` does); every
other pair loads those weights and prints the largest per-variable relative difference
``|g - g_ref| / |g_ref|`` (norms) and the loss difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = dict(
    num_classes=8, alpha=0.35, aspp_channels=64, decoder_channels=64, attention_channels=64
)
BATCH, SIZE = 8, 128


# ------------------------------------------------------------------------------ worker side
def _data(n):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, SIZE, SIZE, 3)).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    layout = (yy // 32 + xx // 32) % MODEL["num_classes"]
    labels = np.broadcast_to(layout, (n, SIZE, SIZE)).astype(np.int32).copy()
    labels[rng.random(labels.shape) < 0.1] = 255
    return images, labels


def _model(weights=None):
    import keras

    import hmsa_keras

    keras.utils.set_random_seed(0)
    model = hmsa_keras.build_model(**MODEL)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    if weights is not None:
        import numpy as np

        data = np.load(weights)
        model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
    return model


def worker(steps):
    """Reads commands on stdin: ``run`` times ``steps`` fit steps, ``quit`` ends."""
    import keras

    model = _model()
    images, labels = _data(BATCH * steps)

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step (JAX dispatches asynchronously)
            self.times.append(time.perf_counter() - self.start)

    def run(n):
        timer = Timer()
        model.fit(
            images[: BATCH * n],
            labels[: BATCH * n],
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        return timer.times

    run(2)  # compile / trace
    print(json.dumps({"ready": keras.backend.backend()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps({"times": run(steps)}), flush=True)


def grads(out_path, weights=None):
    """Weights (if not given) and the loss and gradients on a fixed batch, to ``out_path``."""
    import keras
    import numpy as np

    model = _model(weights)
    images, labels = _data(BATCH)
    result = {}
    if weights is None:
        result.update({f"w{i}": w for i, w in enumerate(model.get_weights())})
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                total, _, _ = model.compute_loss_terms(x, y, training=True)
            return total, tape.gradient(total, model.trainable_variables)

        loss, g = step(tf.constant(images), tf.constant(labels))
        loss, g = float(loss), [x.numpy() for x in g]
    else:
        import jax

        model.optimizer.build(model.trainable_variables)
        state = [
            [v.value for v in vs]
            for vs in (
                model.trainable_variables,
                model.non_trainable_variables,
                model.metrics_variables,
                model.optimizer.variables,
            )
        ]
        fn = jax.jit(
            jax.value_and_grad(model.compute_loss_and_updates, has_aux=True),
            static_argnames=("training",),
        )
        (loss, _), g = fn(
            state[0],
            state[1],
            state[2],
            images,
            labels,
            None,
            training=True,
            optimizer_variables=state[3],
        )
        loss, g = float(loss), [np.asarray(x) for x in g]
    result.update(
        loss=loss,
        names=np.array([v.path for v in model.trainable_variables]),
        **{f"g{i}": x for i, x in enumerate(g)},
    )
    np.savez(out_path, **result)


# ------------------------------------------------------------------------- orchestrator side
def _env(backend, path):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        PYTHONPATH=str(path),
        TF_CPP_MIN_LOG_LEVEL="2",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("JAX_ENABLE_X64", None)
    return env


def _pairs(args):
    """[(name, path, backend)] from ``--code=NAME=PATH[@BACKEND,...]`` and ``--backends``."""
    pairs = []
    for spec in args.code or [f"new={REPO}"]:
        name, rest = spec.split("=", 1)
        path, _, backends = rest.partition("@")
        pairs += [(name, path, b) for b in (backends or args.backends).split(",")]
    return pairs


def speed(args):
    pairs = _pairs(args)
    procs = []
    for name, path, backend in pairs:
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "worker", f"--steps={args.steps}"],
                env=_env(backend, path),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
            )
        )
    labels = [f"{name}/{backend}" for name, _, backend in pairs]
    for label, proc in zip(labels, procs):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {label} failed before it was ready")
        print(f"{label}: ready ({json.loads(line)['ready']})", flush=True)
    times = {label: [] for label in labels}
    rounds = []
    for r in range(args.rounds):
        order = list(range(len(procs)))
        order = order[r % len(order) :] + order[: r % len(order)]
        medians = {}
        for i in order:
            procs[i].stdin.write("run\n")
            procs[i].stdin.flush()
            step_times = json.loads(procs[i].stdout.readline())["times"]
            times[labels[i]] += step_times
            medians[labels[i]] = statistics.median(step_times)
        rounds.append(medians)
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in medians.items()), flush=True
        )
    for proc in procs:
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
    first = labels[0]
    summary = {
        label: {
            "median_step_s": statistics.median(t),
            "steps": len(t),
            "ratio_to_" + first: [round(rd[label] / rd[first], 3) for rd in rounds],
        }
        for label, t in times.items()
    }
    print(json.dumps(summary, indent=1))
    return summary


def parity(args):
    import numpy as np

    pairs = _pairs(args)
    tmp = Path(tempfile.mkdtemp())
    ref_path = tmp / "ref.npz"
    results = {}
    for k, (name, path, backend) in enumerate(pairs):
        out = ref_path if k == 0 else tmp / f"{k}.npz"
        cmd = [sys.executable, __file__, "grads", str(out)] + (
            [] if k == 0 else [f"--weights={ref_path}"]
        )
        subprocess.run(
            cmd, env=_env(backend, path), check=True, cwd=REPO, stderr=subprocess.DEVNULL
        )
        results[f"{name}/{backend}"] = dict(np.load(out))
    labels = list(results)
    ref = results[labels[0]]
    n = len(ref["names"])
    for label in labels[1:]:
        other = results[label]
        assert list(other["names"]) == list(ref["names"]), "variables differ"
        rel = [
            np.linalg.norm(other[f"g{i}"] - ref[f"g{i}"]) / max(np.linalg.norm(ref[f"g{i}"]), 1e-30)
            for i in range(n)
        ]
        worst = int(np.argmax(rel))
        loss, ref_loss = float(other["loss"]), float(ref["loss"])
        print(
            f"{label} vs {labels[0]}: loss {loss:.8f} vs {ref_loss:.8f} "
            f"(rel {abs(loss / ref_loss - 1):.2e}); gradients: max relative "
            f"difference {rel[worst]:.2e} ({ref['names'][worst]}), median {np.median(rel):.2e}, "
            f"over {n} variables"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("speed", "parity", "worker", "grads"))
    parser.add_argument("out", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument(
        "--code", action="append", default=[], help="NAME=PATH of a checkout (repeatable)"
    )
    parser.add_argument("--weights")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args.steps)
    elif args.mode == "grads":
        grads(args.out, args.weights)
    elif args.mode == "speed":
        speed(args)
    else:
        parity(args)


if __name__ == "__main__":
    main()
