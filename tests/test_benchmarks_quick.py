"""Smoke test of the benchmarks: each ``--quick`` run (tiny model, tiny sizes) completes and
writes a JSON report with the expected structure and sane numbers.

The benchmarks run at the same time in subprocesses (each imports TensorFlow and
traces its own graphs), so the wall time is about that of the slowest one.
"""

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses / training / export / benchmarks

from tests.conftest import REPO

TIMEOUT = 1500  # per benchmark; ~1-2 min each on an idle 2-core machine, far more on a loaded one


def _launch(script, out_dir, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / script),
        "--quick",
        f"--out_dir={out_dir}",
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )


def _result(proc):
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT_JSON ")]
    assert lines, out[-3000:]
    with open(lines[-1].split(" ", 1)[1]) as f:
        return json.load(f)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    dirs = {
        name: tmp_path_factory.mktemp(name)
        for name in ("train_cost", "inference", "accuracy", "atrous_grad")
    }
    procs = {
        # explicit attention (8.7x a single-scale step) is left to the full run: CI time
        "train_cost": _launch(
            "train_cost.py", dirs["train_cost"], "--variants=single,hierarchical,hierarchical3"
        ),
        "inference": _launch("inference.py", dirs["inference"]),
        "accuracy": _launch(
            "accuracy.py", dirs["accuracy"], f"--work_dir={dirs['accuracy'] / 'runs'}"
        ),
        "atrous_grad": _launch("atrous_grad.py", dirs["atrous_grad"]),
    }
    try:
        return {name: (_result(p), dirs[name]) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def test_train_cost_quick(reports):
    report, _ = reports["train_cost"]
    assert report["benchmark"] == "train_cost" and report["quick"]
    entry = report["configs"]["tiny"]
    assert _positive(entry["matmul_gflops_median"])
    assert set(entry["variants"]) == {"single", "hierarchical", "hierarchical3"}
    for name, row in entry["variants"].items():
        assert _positive(row["step_seconds_median"]) and _positive(row["time_ratio"])
        assert _positive(row["train_flops"]) and _positive(row["achieved_gflops"])
        mem = row["memory"]
        assert "error" not in mem, mem
        assert mem["peak_mb"] >= mem["baseline_mb"] > 0
        assert _positive(row["train_extra_ratio"]) and _positive(row["peak_rss_ratio"])
    v = entry["variants"]
    assert v["single"]["time_ratio"] == pytest.approx(1.0)
    # more scales, more work (the tiny model's counts are dominated by size-independent ops,
    # so the 1.25x / 5.25x pixel ratios only show on real models)
    assert (
        v["single"]["train_flops"]
        < v["hierarchical"]["train_flops"]
        < v["hierarchical3"]["train_flops"]
    )
    assert v["hierarchical"]["pixels_ratio"] == 1.25
    assert v["hierarchical3"]["pixels_ratio"] == 5.25
    assert report["checks"] and all(
        {"name", "value", "target", "ok"} <= set(c) for c in report["checks"]
    )


def test_inference_quick(reports):
    report, _ = reports["inference"]
    assert report["benchmark"] == "inference"
    entry = report["sizes"]["64x128"]
    assert _positive(entry["matmul_gflops_median"])
    assert set(entry["chains"]) == {"1", "0.5+1", "0.5+1+2", "0.5+1+2 flip"}
    for name, row in entry["chains"].items():
        assert _positive(row["forward_flops"])
        cell = row["backends"]["keras"]
        assert _positive(cell["latency_seconds_median"]) and _positive(cell["achieved_gflops"])
    flops = {n: r["forward_flops"] for n, r in entry["chains"].items()}
    # the graph of model.segment is counted: flip runs the chain twice (plus the averaging)
    assert 2 * flops["0.5+1+2"] <= flops["0.5+1+2 flip"] < 2.01 * flops["0.5+1+2"]
    assert flops["1"] < flops["0.5+1"] < flops["0.5+1+2"]
    for backend in ("saved_model", "tflite"):
        cell = entry["chains"]["0.5+1"]["backends"][backend]
        assert "error" not in cell, cell
        assert _positive(cell["latency_seconds_median"])


def test_accuracy_quick(reports):
    report, out_dir = reports["accuracy"]
    assert report["benchmark"] == "accuracy"
    entry = report["datasets"]["synthetic"]
    rows = entry["results"]
    # single/mean + hmsa/{hierarchical, mean}, 3 chains, with and without flip
    assert len(rows) == 3 * 3 * 2
    for r in rows:
        assert 0.0 <= r["miou"] <= 1.0
    assert {(r["method"], r["fusion"]) for r in rows} == {
        ("single", "mean"),
        ("hmsa", "hierarchical"),
        ("hmsa", "mean"),
    }
    for name in ("accuracy.png", "attention_example.png", "accuracy.md"):
        assert (out_dir / name).stat().st_size > 0
    assert "| hmsa / hierarchical |" in (out_dir / "accuracy.md").read_text()


def test_atrous_grad_quick(reports):
    report, _ = reports["atrous_grad"]
    assert report["benchmark"] == "atrous_grad"
    entry = report["configs"]["tiny"]
    assert set(entry["variants"]) == {"single", "hierarchical"}
    for row in entry["variants"].values():
        assert row["dilated_convolutions"] == 3  # the three atrous ASPP branches
        assert row["gradient_max_relative_difference"] < 1e-4  # both compute the same gradients
        assert all(_positive(t) for t in row["step_seconds_median"].values()) and _positive(
            row["speedup"]
        )
