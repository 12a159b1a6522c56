"""A dilated 3x3 convolution (forward, input gradient, kernel gradient) three ways, at the
shapes of the ResNet-50 output-stride-8 model's ASPP and dilated trunk stages.

    python benchmarks/profiling/dilated_conv_ops.py [--threads=1] [--rounds=4]

- ``s2b``: ``tf.nn.convolution`` with ``dilations``: SpaceToBatch -> Conv2D -> BatchToSpace
  (what Keras' ``Conv2D`` runs, and hmsa_keras before issue 17), and for the input gradient the
  same op applied to the output gradient with the flipped kernel;
- ``native``: ``tf.nn.conv2d`` / ``Conv2DBackpropInput`` / ``Conv2DBackpropFilter`` with
  ``dilations`` (oneDNN's dilated kernels);
- ``taps`` (kernel gradient only): :func:`hmsa_keras.models.tf_ops._kernel_gradient`, one
  matmul per kernel tap over the pixels it overlaps.

Median process CPU time per call (less sensitive than wall time to other jobs). The figures
in docs/benchmarks.md ("Against the PyTorch reference") come from this script.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (batch, height, width, in channels, out channels, rate): ASPP at the 1.0 and 0.5 scales of a
# 256x512 crop (32x64 and 16x32 maps), dilated trunk convolutions (conv4: 256 ch rate 2,
# conv5: 512 ch rate 4)
CASES = [
    (2, 32, 64, 2048, 256, 12),
    (2, 32, 64, 2048, 256, 24),
    (2, 32, 64, 2048, 256, 36),
    (2, 16, 32, 2048, 256, 12),
    (2, 16, 32, 2048, 256, 24),
    (2, 16, 32, 2048, 256, 36),
    (2, 32, 64, 256, 256, 2),
    (2, 32, 64, 512, 512, 4),
]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf

    from hmsa_keras.models import tf_ops

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    ops = {}
    for b, h, w, cin, cout, r in CASES:
        x = tf.random.normal([b, h, w, cin])
        k = tf.random.normal([3, 3, cin, cout]) * 0.01
        dy = tf.random.normal([b, h, w, cout])
        case = f"{b}x{h}x{w} {cin}->{cout} rate {r}"
        flipped = tf.transpose(tf.reverse(k, axis=[0, 1]), [0, 1, 3, 2])
        fns = {
            "forward s2b": lambda r=r, x=x, k=k: tf.nn.convolution(
                x, k, padding="SAME", dilations=r
            ),
            "forward native": lambda r=r, x=x, k=k: tf.nn.conv2d(x, k, 1, "SAME", dilations=r),
            "input grad s2b": lambda r=r, dy=dy, f=flipped: tf.nn.convolution(
                dy, f, padding="SAME", dilations=r
            ),
            "input grad native": lambda r=r, x=x, k=k, dy=dy: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x),
                filter=k,
                out_backprop=dy,
                strides=[1, 1, 1, 1],
                padding="SAME",
                dilations=[1, r, r, 1],
            ),
            "kernel grad native": lambda r=r, x=x, k=k, dy=dy: tf.raw_ops.Conv2DBackpropFilter(
                input=x,
                filter_sizes=tf.shape(k),
                out_backprop=dy,
                strides=[1, 1, 1, 1],
                padding="SAME",
                dilations=[1, r, r, 1],
            ),
            "kernel grad taps": lambda r=r, x=x, k=k, dy=dy: tf_ops._kernel_gradient(
                x, dy, k.shape, [r, r]
            ),
        }
        for name, fn in fns.items():
            ops[(case, name)] = tf.function(fn)
    cpu = {key: [] for key in ops}
    for _ in range(args.rounds + 1):  # the first round traces
        for key, fn in ops.items():
            tic = time.process_time()
            fn().numpy()
            cpu[key].append(time.process_time() - tic)
    print(
        f"median CPU seconds per call ({args.threads or 'default'} threads, {args.rounds} rounds)"
    )
    for (case, name), values in cpu.items():
        print(f"  {case:32s} {name:20s} {np.median(values[1:]):.4f}")


if __name__ == "__main__":
    main()
