"""The ResNet-50 OS8 two-scale training step compiled with and without XLA
(``tf.function(jit_compile=True)``), timed side by side in one process.

    python benchmarks/profiling/xla_train_step.py [--size=128x256] [--batch=2] [--threads=1]
        [--rounds=3]

Reports the first call (trace + compile) and the median process CPU time of the following
calls (CPU time: less sensitive than wall time to other jobs on a shared machine). The
figure quoted in docs/benchmarks.md ("Against the PyTorch reference": XLA 1.6x slower) comes
from this script's defaults.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf

    import hmsa_keras

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    keras.utils.set_random_seed(0)
    model = hmsa_keras.build_model(num_classes=19, trunk="resnet50", output_stride=8)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="ce", scale_loss_weight=0.05
    )
    x = tf.random.normal([args.batch, h, w, 3])
    y = tf.random.uniform([args.batch, h, w], 0, 19, tf.int32)
    steps = {
        "no_xla": tf.function(model.train_step),
        "xla": tf.function(model.train_step, jit_compile=True),
    }
    for name, step in steps.items():
        tic = time.perf_counter()
        float(step((x, y))["loss"])
        print(f"{name}: first call {time.perf_counter() - tic:.1f} s", flush=True)
    cpu = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            tic = time.process_time()
            float(step((x, y))["loss"])
            cpu[name].append(time.process_time() - tic)
    for name, values in cpu.items():
        print(
            f"{name}: median CPU {np.median(values):.2f} s per step "
            f"({', '.join(f'{v:.2f}' for v in values)})"
        )
    print(f"xla / no_xla: {np.median(cpu['xla']) / np.median(cpu['no_xla']):.2f}x")


if __name__ == "__main__":
    main()
