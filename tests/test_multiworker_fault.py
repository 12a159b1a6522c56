"""A killed worker in multi-worker training: two ``hmsa-train`` workers on
127.0.0.1 (tests/helpers/fault_driver.py, the real command-line tool), one killed with
SIGKILL mid-epoch. The survivor must not hang: it exits with status 4 and one message naming
the lost peer and the checkpoint to resume from. Restarting both with the same commands
resumes from that checkpoint and ends with the weights of an uninterrupted run.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # four training processes

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "helpers" / "fault_driver.py"
RUN_TIMEOUT = 900  # a whole run under heavy load; a quiet 2-core machine needs ~1-2 min
SURVIVOR_TIMEOUT = 180  # TensorFlow aborts the collectives within seconds (heartbeat: 10 s)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(index, ports, model_dir, logs):
    env = dict(os.environ, PYTHONPATH=f"{DRIVER.parent}{os.pathsep}{REPO}", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    out = open(logs / f"worker{index}.out", "a")
    err = open(logs / f"worker{index}.err", "a")
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(index), str(ports[0]), str(ports[1]), str(model_dir)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=err,
    )


def _log(logs, index, stream):
    return (logs / f"worker{index}.{stream}").read_text()


def _run_to_end(ports, model_dir, logs):
    procs = [_start(i, ports, model_dir, logs) for i in range(2)]
    try:
        for p in procs:
            p.wait(timeout=RUN_TIMEOUT)
    finally:
        for p in procs:  # a hung peer must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        assert p.returncode == 0, (
            f"worker {i}:\n{_log(logs, i, 'out')[-3000:]}\n{_log(logs, i, 'err')[-6000:]}"
        )


def _weights(keras_file):
    """{name: array} of every weight stored in a .keras file (read with h5py, no Keras)."""
    import h5py

    out = {}
    with zipfile.ZipFile(keras_file) as archive, archive.open("model.weights.h5") as f:
        with h5py.File(f, "r") as h5:

            def keep(name, obj):
                if isinstance(obj, h5py.Dataset):
                    out[name] = obj[()]

            h5.visititems(keep)
    return out


def test_killed_worker_survivor_exits_and_restart_resumes_to_the_same_weights(tmp_path):
    # 1. The uninterrupted run.
    ref_dir, ref_logs = tmp_path / "reference", tmp_path / "reference_logs"
    ref_logs.mkdir()
    _run_to_end(_free_ports(2), ref_dir, ref_logs)
    reference = _weights(ref_dir / "last.keras")
    assert len(reference) > 100

    # 2. The same job; worker 1 is killed mid-epoch (6 steps), after the checkpoint of step 2.
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    ports = _free_ports(2)
    procs = [_start(i, ports, run_dir, logs) for i in range(2)]
    try:
        deadline = time.time() + RUN_TIMEOUT
        while not (run_dir / "checkpoints" / "ckpt-2.index").exists():
            assert time.time() < deadline and all(p.poll() is None for p in procs), (
                _log(logs, 0, "out") + _log(logs, 0, "err")[-4000:]
            )
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        status = procs[0].wait(timeout=SURVIVOR_TIMEOUT)
        survivor_seconds = time.time() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err = _log(logs, 0, "err")
    assert status == 4, err[-6000:]
    message = [line for line in err.splitlines() if line.startswith("hmsa-train: error:")]
    assert len(message) == 1, err[-6000:]
    text = message[0]
    assert (
        f"worker 0 lost contact with worker 1 (127.0.0.1:{ports[1]}) during training step" in text
    )
    assert "The last checkpoint is " in text
    assert "restart every worker with the same command" in text
    assert "Traceback" not in err, err[-6000:]
    assert not (run_dir / "last.keras").exists()  # it really stopped mid-run
    print(f"survivor exited {survivor_seconds:.1f} s after the kill: {message[0]}")

    # 3. Restart both with the same commands: resume from the last checkpoint, same weights.
    _run_to_end(ports, run_dir, logs)
    out = _log(logs, 0, "out")
    assert "Starting a new run" in out and "Resuming from " in out, out  # first run, then resume
    resumed = _weights(run_dir / "last.keras")
    assert sorted(resumed) == sorted(reference)
    worst = max(
        float(np.max(np.abs(resumed[k] - reference[k]))) if resumed[k].size else 0.0
        for k in reference
    )
    print(f"largest weight difference to the uninterrupted run: {worst:.3g}")
    for k in reference:
        np.testing.assert_allclose(resumed[k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)
