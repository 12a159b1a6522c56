"""Helpers shared by the benchmarks: timing, FLOP counting, memory, machine facts."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time


def _status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    """Current resident set size of this process (MiB), /proc/self/status VmRSS."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB).

    /proc/self/status ``VmHWM`` (the high-water mark of this address space). Not
    ``getrusage().ru_maxrss`` alone: on Linux a child started by fork+exec inherits the
    parent's high-water mark in ru_maxrss, so a small worker forked from a big parent
    reports the parent's peak. Falls back to ru_maxrss where /proc is missing.
    """
    hwm = _status_mb("VmHWM")
    if hwm == hwm:  # not NaN
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(values):
    return statistics.median(values) if values else float("nan")


def machine_info():
    import keras
    import tensorflow as tf

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    except (ValueError, OSError):
        mem_gb = float("nan")
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def graph_flops(concrete_function) -> int:
    """Float operations of a concrete function's graph, counted by TensorFlow's profiler
    (``ProfileOptionBuilder.float_operation()``: the registered flop statistics of Conv2D,
    its backprop ops, depthwise convs, MatMul, element-wise ops...). Needs static shapes."""
    import tensorflow as tf

    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=concrete_function.graph, options=opts).total_float_ops)


def network_flops(network, batch, height, width, num_classes, training):
    """FLOPs of one pass of the single-scale segmenter at a static input size.

    ``training=False``: the forward graph. ``training=True``: forward + gradients of a
    cross-entropy loss on the logits (plus the attention output) w.r.t. every trainable
    weight, as one graph; the profiler counts the backprop convolutions too.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([batch, height, width, 3], tf.float32)
    if not training:
        fn = tf.function(lambda x: network(x, training=False))
        return graph_flops(fn.get_concrete_function(spec))

    def step(x, y):
        with tf.GradientTape() as tape:
            out = network(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, out["logits"]))
            loss += tf.reduce_mean(out["attention_logits"])
        return tape.gradient(loss, network.trainable_variables)

    fn = tf.function(step)
    return graph_flops(fn.get_concrete_function(spec, tf.TensorSpec([batch, height, width], tf.int32)))


def scaled(h, w, s):
    """Same arithmetic as hmsa_keras.models.fusion.scaled_size."""
    import math

    return max(int(math.floor(h * s)), 1), max(int(math.floor(w * s)), 1)


def matmul_rate(n=2048, repeats=5):
    """Dense float32 matmul GFLOP/s (2 n^3 per product), median over ``repeats`` single products."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)))
    mm(a, b).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).numpy()
        times.append(time.perf_counter() - t)
    return times, [2.0 * n ** 3 / t / 1e9 for t in times]


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)
