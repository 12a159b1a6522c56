"""Strategy factory: default, mirrored (local GPUs or N logical CPUs), multi_worker (TF_CONFIG).

Must be called before any other TensorFlow op runs: logical CPU devices and the
multi-worker collective runtime can only be configured at start-up.

A lost worker (multi_worker). Every step all-reduces gradients and BatchNorm statistics
across the workers, so a worker that dies or hangs blocks the others in a collective.
TensorFlow bounds that wait: the collectives abort with ``UnavailableError`` when the
peer's connection breaks (a killed process: at once) or when the coordination service
misses its heartbeats (a hung or unreachable machine: TensorFlow's heartbeat timeout, 10 s
by default, measured ~20 s to the abort). :func:`guard_collectives` turns that error into
:class:`WorkerLost`, whose one-paragraph message names the lost peer, the step and the
checkpoint to resume from; ``hmsa-train`` prints it and exits with status 4. Restarting
every worker with the same command resumes from the chief's last checkpoint (every worker
must read the chief's ``model_dir``: a shared file system), and
:func:`check_workers_agree` stops a resume in which the workers restored different steps.
This is the restart-from-checkpoint story of TensorFlow's multi-worker guides; it is
tested with two localhost workers, one killed with SIGKILL mid-epoch
(tests/test_multiworker_fault.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Callable, List, Optional

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
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable "
                "(cluster spec and this worker's task), see docs/training.md"
            )
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
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError as e:
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != n:
            raise RuntimeError(
                f"Cannot make {n} logical CPU devices: TensorFlow is already "
                f"initialised with {len(existing)} ({e})"
            ) from e
    return [f"/cpu:{i}" for i in range(n)]


def is_chief(strategy) -> bool:
    """True on the worker that writes summaries and the real checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


# ------------------------------------------------------------------------------ lost workers
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)
_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")
_REASONS = (
    "stopped sending heartbeats",
    "Connection reset by peer",
    "Socket closed",
    "Connection refused",
    "failed to connect",
    "Deadline Exceeded",
    "heartbeat",
)


class MultiWorkerFault(RuntimeError):
    """A multi-worker job cannot go on (``hmsa-train`` prints the message, exit status 4)."""


class WorkerLost(MultiWorkerFault):
    """A peer of a multi-worker job stopped answering; the collectives were aborted."""


def num_workers(strategy) -> int:
    """Number of worker processes of ``strategy`` (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker"))


def _self_task(strategy):
    resolver = strategy.cluster_resolver
    return resolver.task_type, int(resolver.task_id)


def lost_peers(message: str, strategy) -> List[str]:
    """The peers a TensorFlow error message names, other than this worker, as
    ``"worker 1 (127.0.0.1:2223)"``."""
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    me = _self_task(strategy)
    found = []
    for job, task in _TASK.findall(message):
        key = (job, int(task))
        if key == me:
            continue
        addresses = spec.get(job, [])
        address = f" ({addresses[key[1]]})" if key[1] < len(addresses) else ""
        text = f"{job} {key[1]}{address}"
        if text not in found:
            found.append(text)
    return found


def describe_lost_worker(exc: Exception, strategy, where: str, checkpoint: Optional[str]) -> str:
    """The one-paragraph message of :class:`WorkerLost` for a collective that failed (``exc``)."""
    message = str(exc)
    job, task = _self_task(strategy)
    peers = lost_peers(message, strategy)
    reason = next((r for r in _REASONS if r.lower() in message.lower()), exc.__class__.__name__)
    who = ", ".join(peers) if peers else "a peer (TensorFlow did not name it)"
    restart = "restart every worker with the same command"
    resume = (
        f"The last checkpoint is {checkpoint}: {restart} to resume from it."
        if checkpoint
        else f"No checkpoint was written yet: {restart} to start again."
    )
    return (
        f"{job} {task} lost contact with {who} during {where} ({reason}); the collectives were "
        f"aborted instead of waiting. {resume} Every worker must read the chief's model_dir "
        "(a shared file system)."
    )


def guard_collectives(
    fn: Callable, strategy, where: Callable[[], str], checkpoint: Callable[[], Optional[str]]
) -> Callable:
    """``fn`` raising :class:`WorkerLost` instead of TensorFlow's collective errors under a
    multi-worker strategy (other strategies: ``fn`` itself). ``where()`` and ``checkpoint()``
    are asked at the time of the failure (e.g. ``"training step 7"``, the last checkpoint)."""
    if num_workers(strategy) <= 1:
        return fn

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PEER_ERRORS as exc:
            raise WorkerLost(describe_lost_worker(exc, strategy, where(), checkpoint())) from None

    return guarded


def check_workers_agree(strategy, value: int, what: str, hint: str = "") -> None:
    """Raises :class:`MultiWorkerFault` unless every worker of ``strategy`` holds the same integer
    ``value`` (e.g. the training step restored from a checkpoint). One all-reduce of
    ``[1, v, v^2]``: all equal iff ``n * sum(v^2) == sum(v)^2``. No-op for one worker."""
    if num_workers(strategy) <= 1:
        return
    v = float(value)

    def local(_):
        return tf.constant([1.0, v, v * v], tf.float64)

    values = strategy.experimental_distribute_values_from_function(local)
    totals = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)
    n, total, squares = (float(x) for x in totals.numpy())
    if n * squares != total * total:
        job, task = _self_task(strategy)
        raise MultiWorkerFault(
            f"{job} {task} has {what} {value}, but the workers disagree (their "
            f"mean is {total / n:g}){': ' + hint if hint else ''}"
        )
