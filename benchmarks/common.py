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
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        mem_gb = float("nan")
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


_BACKPROP = (
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "DepthwiseConv2dNativeBackpropInput",
    "DepthwiseConv2dNativeBackpropFilter",
)


def _backprop_flops(op):
    """2 x (output-gradient elements) x (kernel taps x input channels per output channel):
    the same count as the forward convolution that produced the output gradient.

    TensorFlow's registered statistics size these ops by their *input* instead, which
    over-counts the small VALID convolutions that a dilated convolution becomes after
    SpaceToBatch (up to 6x for the 3x4 -> 1x2 maps of a rate-18 ASPP branch), and it has
    no statistics for the depthwise ones."""
    out_grad = op.inputs[2].shape
    kernel = op.inputs[1].shape if op.type.endswith("Input") else op.outputs[0].shape
    if not (out_grad.is_fully_defined() and kernel.is_fully_defined()):
        raise ValueError(
            f"{op.name}: shapes are not static ({out_grad}, {kernel}); FLOPs need a static graph"
        )
    kh, kw, cin = kernel[0], kernel[1], kernel[2]
    per_output = kh * kw * (1 if op.type.startswith("Depthwise") else cin)
    return 2 * out_grad.num_elements() * per_output


DENSE_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", *_BACKPROP)


def graph_flops(concrete_function, op_types=None) -> int:
    """Float operations of a concrete function's graph (static shapes needed).

    ``op_types``: count only these op types (e.g. :data:`DENSE_OPS`, the convolutions and
    matmuls, comparable with ``torch.utils.flop_counter.FlopCounterMode``); default all.

    Every op counts with TensorFlow's registered flop statistics (those
    ``tf.compat.v1.profiler``'s ``float_operation()`` sums: Conv2D, depthwise
    convolution, MatMul, element-wise ops...), except the convolution gradients, which
    :func:`_backprop_flops` counts. Counts the ops that are in the graph, i.e. what runs."""
    from tensorflow.python.framework import ops as tf_ops

    graph = concrete_function.graph
    total = 0
    for op in graph.get_operations():
        if op_types is not None and op.type not in op_types:
            continue
        if (
            op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul")
            and not op.outputs[0].shape.is_fully_defined()
        ):
            raise ValueError(
                f"{op.name}: output shape {op.outputs[0].shape} is not static; "
                "FLOPs need static shapes"
            )
        if op.type in _BACKPROP:
            total += _backprop_flops(op)
            continue
        try:
            total += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
        except ValueError:  # no statistics registered for this op type
            pass
    return int(total)


def train_step_flops(model, batch, height, width):
    """FLOPs of one compiled ``model.train_step`` (forward, loss, gradients, update) on a
    static batch: the graph that the benchmark times, scales, fusion and loss included."""
    import tensorflow as tf

    specs = (
        tf.TensorSpec([batch, height, width, 3], tf.float32),
        tf.TensorSpec([batch, height, width], tf.int32),
    )
    return graph_flops(tf.function(model.train_step).get_concrete_function(specs))


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
    return times, [2.0 * n**3 / t / 1e9 for t in times]


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)
