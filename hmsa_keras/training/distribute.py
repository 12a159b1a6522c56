"""Strategy factory: default, mirrored (local GPUs or N logical CPUs), multi_worker (TF_CONFIG).

Must be called before any other TensorFlow op runs: logical CPU devices and the
multi-worker collective runtime can only be configured at start-up.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name="default", num_cpu_replicas=0):
    """Returns a ``tf.distribute.Strategy``.

    - ``default``: one device.
    - ``mirrored``: all local GPUs; on a machine without GPUs, ``num_cpu_replicas``
      logical CPU devices (>= 2 gives real multi-replica code paths on one CPU).
    - ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task), see docs/training.md")
        json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
        if num_cpu_replicas:
            split_cpu(num_cpu_replicas)
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and not num_cpu_replicas:
        return tf.distribute.MirroredStrategy()
    devices = split_cpu(max(num_cpu_replicas, 1))
    return tf.distribute.MirroredStrategy(devices=devices)


def split_cpu(n):
    """Splits the CPU into ``n`` logical devices (before TF initialises) and names them."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != n:
            raise RuntimeError(f"Cannot make {n} logical CPU devices: TensorFlow is already "
                               f"initialised with {len(existing)} ({e})") from e
    return [f"/cpu:{i}" for i in range(n)]


def is_chief(strategy) -> bool:
    """True on the worker that writes summaries and the real checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())
