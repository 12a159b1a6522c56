"""float32 vs ``mixed_bfloat16`` HMSA training steps (and inference chains), side by side in
one process, for the configs of benchmarks/train_cost.py.

    python benchmarks/profiling/bf16_step.py [--configs=quickstart,mnv2_256x512] [--threads=0]
        [--rounds=5] [--chain=0.5,1.0,2.0] [--infer_size=512x1024]

For each config, two models with the same weights, one per precision policy; compiled
``train_step`` s on one fixed batch, then (``--infer_size``) compiled ``model.segment`` with the
chain at that size, interleaved round by round after a warm-up each. Reports median wall and
process CPU seconds and bfloat16 / float32. The quickstart figures in docs/benchmarks.md
("bfloat16") come from this script.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import train_cost  # noqa: E402


def build(config, precision):
    import keras

    import hmsa_keras

    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = hmsa_keras.build_model(num_classes=train_cost.NUM_CLASSES, **config["model"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss="ce")
    return model


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="quickstart")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chain", default="0.5,1.0,2.0")
    parser.add_argument(
        "--infer_size", default="", help="HxW: also time inference (default: training only)"
    )
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf

    from hmsa_keras.inference import compiled_segment

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    chain = tuple(float(s) for s in args.chain.split(","))
    for name in args.configs.split(","):
        config = train_cost.CONFIGS[name]
        data = train_cost.batch(config)
        runs = {}
        models = {p: build(config, p) for p in ("float32", "mixed_bfloat16")}
        models["mixed_bfloat16"].set_weights(models["float32"].get_weights())
        for precision, model in models.items():
            step = tf.function(model.train_step)
            runs[f"train {precision}"] = lambda step=step: float(step(data)["loss"])
            if args.infer_size:
                h, w = (int(v) for v in args.infer_size.split("x"))
                segment = compiled_segment(model, chain)
                x = tf.random.normal([1, h, w, 3], seed=1)
                runs[f"infer {precision}"] = lambda segment=segment, x=x: segment(x)[
                    "classes"
                ].numpy()
        for run in runs.values():
            run()  # trace
        wall = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        keys = list(runs)
        for r in range(args.rounds):
            for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                tic, c = time.perf_counter(), time.process_time()
                runs[k]()
                wall[k].append(time.perf_counter() - tic)
                cpu[k].append(time.process_time() - c)
        print(
            f"== {name} (batch {config['batch']}, crop {config['crop']}, "
            f"{args.threads or 'default'} threads, "
            f"load {os.getloadavg()[0]:.1f})"
        )
        for k in keys:
            print(f"   {k:24s} wall {np.median(wall[k]):7.3f} s  cpu {np.median(cpu[k]):7.3f} s")
        for part in ("train", "infer"):
            a, b = f"{part} mixed_bfloat16", f"{part} float32"
            if a in wall:
                print(
                    f"   {part}: bfloat16 / float32 "
                    f"wall {np.median(wall[a]) / np.median(wall[b]):.2f}x, "
                    f"cpu {np.median(cpu[a]) / np.median(cpu[b]):.2f}x"
                )


if __name__ == "__main__":
    main()
