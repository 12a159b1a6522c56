"""What AtrousConv2D's gradients buy: HMSA training steps with them vs with TensorFlow's own.

    python benchmarks/atrous_grad.py [--quick] [--configs=mnv2_256x512,r50_256x512] [--rounds=N]
                                     [--out_dir=DIR]

TensorFlow differentiates a dilated convolution through SpaceToBatch, and on CPU those
gradients cost 0.1-0.7 s per 3x3 ASPP branch almost whatever the feature-map size
(see hmsa_keras/models/atrous_conv2d.py). For each config (the models of
benchmarks/train_cost.py), two copies of the same model with the same weights:

  hmsa_keras   as built: every dilated Conv2D is an ``AtrousConv2D``
  tensorflow   the same layers with ``keras.layers.Conv2D``'s convolution, i.e. TensorFlow's
               gradients

First the gradients of one training loss are compared (they must agree: max difference
relative to the largest gradient entry), then, for single-scale and hierarchical training,
compiled ``train_step`` s of both copies are timed on one fixed batch, interleaved round by
round in rotating order after a warm-up step each. Reports median step times and the
speed-up ``tensorflow / hmsa_keras``. Writes ``atrous_grad.json`` (``--out_dir``, default
benchmarks/results; a temporary directory with ``--quick``). Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import train_cost  # noqa: E402

VARIANTS = ("single", "hierarchical")
IMPLEMENTATIONS = ("hmsa_keras", "tensorflow")


def with_tensorflow_gradients(model):
    """Switches every AtrousConv2D of ``model`` back to Conv2D's convolution op; returns how
    many."""
    import keras

    from hmsa_keras.models.atrous_conv2d import AtrousConv2D

    count = 0
    stack = [model.network]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif isinstance(layer, AtrousConv2D):
            layer.convolution_op = types.MethodType(keras.layers.Conv2D.convolution_op, layer)
            count += 1
    return count


def gradient_difference(models, data):
    """Max |g_hmsa - g_tf| / max |g_tf| over all trainable weights, for one training loss."""
    import numpy as np
    import tensorflow as tf

    grads = {}
    for impl, model in models.items():

        @tf.function
        def grad_fn(images, labels, model=model):
            with tf.GradientTape() as tape:
                total, _, _ = model.compute_loss_terms(images, labels, training=False)
            return tape.gradient(total, model.trainable_variables)

        grads[impl] = [None if g is None else g.numpy() for g in grad_fn(*data)]
    pairs = [(a, b) for a, b in zip(grads["hmsa_keras"], grads["tensorflow"]) if b is not None]
    scale = max(float(np.abs(b).max()) for _, b in pairs)
    return max(float(np.abs(a - b).max()) for a, b in pairs) / scale


def run_config(name, rounds):
    import keras

    config = train_cost.CONFIGS[name]
    data = train_cost.batch(config)
    entry = {
        "model": config["model"],
        "crop": list(config["crop"]),
        "batch": config["batch"],
        "variants": {},
    }
    for variant in VARIANTS:
        models = {impl: train_cost.build(config, variant) for impl in IMPLEMENTATIONS}
        models["tensorflow"].set_weights(models["hmsa_keras"].get_weights())
        switched = with_tensorflow_gradients(models["tensorflow"])
        diff = gradient_difference(models, data)
        steps = {impl: train_cost.make_step(m) for impl, m in models.items()}
        for step in steps.values():
            step(data)  # trace
            step(data)  # warm
        times = {impl: [] for impl in IMPLEMENTATIONS}
        for r in range(rounds):
            order = IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]
            for impl in order:
                t = time.perf_counter()
                steps[impl](data)
                times[impl].append(time.perf_counter() - t)
            print(
                f"  {name} {variant} round {r + 1}/{rounds}: "
                + ", ".join(f"{i} {times[i][-1]:.3f}s" for i in IMPLEMENTATIONS),
                flush=True,
            )
        med = {impl: common.median(times[impl]) for impl in IMPLEMENTATIONS}
        entry["variants"][variant] = {
            "dilated_convolutions": switched,
            "gradient_max_relative_difference": diff,
            "step_seconds_median": med,
            "step_seconds_runs": times,
            "speedup": med["tensorflow"] / med["hmsa_keras"],
        }
        print(
            f"-- {name} {variant}: {switched} dilated convs; "
            f"step hmsa_keras {med['hmsa_keras']:.3f}s, "
            f"tensorflow {med['tensorflow']:.3f}s: "
            f"{med['tensorflow'] / med['hmsa_keras']:.2f}x faster; "
            f"gradients agree to {diff:.1e}",
            flush=True,
        )
        del models, steps
        keras.backend.clear_session()
    return entry


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 rounds (CI smoke run)")
    parser.add_argument(
        "--configs", default=None, help="comma-separated: " + ", ".join(train_cost.CONFIGS)
    )
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 5; --quick 2)")
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args(argv)
    names = (
        args.configs.split(",")
        if args.configs
        else (["tiny"] if args.quick else ["mnv2_256x512", "r50_256x512"])
    )
    rounds = args.rounds or (2 if args.quick else 5)
    out_dir = args.out_dir or (
        tempfile.mkdtemp(prefix="hmsa_atrous_grad_")
        if args.quick
        else str(REPO / "benchmarks" / "results")
    )
    path = os.path.join(out_dir, "atrous_grad.json")
    report = {
        "benchmark": "atrous_grad",
        "quick": bool(args.quick),
        "machine": common.machine_info(),
        "rounds": rounds,
        "configs": {},
    }
    print(
        f"hmsa_keras dilated-convolution gradient benchmark: {report['machine']['cpu']}, "
        f"rounds={rounds}",
        flush=True,
    )
    for name in names:
        report["configs"][name] = run_config(name, rounds)
        common.write_json(report, path)
    print(f"RESULT_JSON {path}", flush=True)
    return report


if __name__ == "__main__":
    main()
