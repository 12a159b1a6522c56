"""Training cost of HMSA vs single-scale and explicit multi-scale training.

    python benchmarks/train_cost.py [--quick]
                                    [--configs=mnv2_256x512,r50_256x512,r50_512x1024]
                                    [--variants=single,hierarchical,...] [--rounds=N]
                                    [--out_dir=DIR]

Variants (one :class:`hmsa_keras.HMSA` class, the training fusion differs):

  single         ``fusion="single"``: the network at 1.0 only
  hierarchical   ``fusion="hierarchical"``, ``train_scales=(0.5, 1.0)``: HMSA (1.25x pixels)
  hierarchical3  ``fusion="hierarchical"``, ``train_scales=(0.5, 1.0, 2.0)``: three-scale HMSA
                 training (the chain of reference ``nscale_forward``; attention at 0.5 and 1.0;
                 5.25x pixels), the student report's three-scale model
  explicit       ``fusion="explicit"``, ``train_scales=(0.5, 1.0, 2.0)``: softmax attention over
                 three scales (Chen et al. 2016; 5.25x pixels)
  hierarchical_attn64  HMSA with a 64-channel attention head instead of the reference's 256
                 (only with ``--variants``)

Configs (19 classes, float32, output stride 16, heads 256 channels, SGD momentum):

  mnv2_256x512   MobileNetV2 alpha 1.0, crop 256x512, batch 2
  r50_256x512    ResNet-50, crop 256x512, batch 1
  r50_512x1024   ResNet-50, crop 512x1024, batch 1 (single + hierarchical only: explicit and
                 hierarchical3 would run the network at 1024x2048 and are left out on this 24 GB
                 machine)
  hrnet_w48_256x512  HRNetV2-W48 + OCR head (reference ``ocrnet.HRNet_Mscale``; its auxiliary
                 output always on, loss 1.0 fused + 0.4 aux + 0.05 per scale), crop 256x512,
                 batch 1 (single + hierarchical; not in the default run)
  quickstart     the model of flags/quickstart.cfg: MobileNetV2 alpha 0.35, 64-channel heads,
                 crop 128x128, batch 8 (single + hierarchical)
  tiny           (--quick) MobileNetV2 alpha 0.35, 8-channel heads, crop 64x128, batch 1

Method:

- Step time: all variants of a config live in ONE process; each has a compiled
  ``tf.function(model.train_step)`` (after ``model.compile(optimizer, loss='ce')``) fed a
  fixed random batch. After two warm-up steps each (the first traces), ``rounds`` rounds time one
  step of every variant, the order rotating each round, and a 2048x2048 float32
  ``tf.linalg.matmul`` (the machine's dense peak, measured in the same rounds). Medians
  are reported, and the ratios of medians to single-scale.
- Peak memory: each variant in its own fresh subprocess (same model, same batch): RSS
  after building the model and the optimizer (``baseline``), then three training steps
  (the first traces); ``peak`` = the process's peak RSS, ``VmHWM`` of /proc/self/status
  (= ``ru_maxrss``, which after fork+exec would inherit the parent's peak); ``train_extra`` = peak -
  baseline (activations, gradients, optimizer slots, graph tracing). TensorFlow's
  ``get_memory_info('CPU:0')`` is not available for the CPU allocator (it raises), and
  tracemalloc does not see TensorFlow's C++ allocations.
- FLOPs: the graph of the timed ``train_step`` itself (every scale, the fusion, the
  losses, the gradients and the update), counted by ``common.graph_flops``: TensorFlow's
  registered flop statistics, with convolution gradients counted like the forward
  convolution they belong to (TensorFlow's statistics over-count them after SpaceToBatch).
  Achieved GFLOP/s = FLOPs / median step time, compared with the matmul rate.

Prints a table per config and writes ``train_cost.json`` (``--out_dir``, default
benchmarks/results; a temporary directory with ``--quick``). Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

NUM_CLASSES = 19
VARIANTS = {
    "single": dict(fusion="single", train_scales=(1.0,)),
    "hierarchical": dict(fusion="hierarchical", train_scales=(0.5, 1.0)),
    "hierarchical3": dict(fusion="hierarchical", train_scales=(0.5, 1.0, 2.0)),
    "explicit": dict(fusion="explicit", train_scales=(0.5, 1.0, 2.0)),
    # not in the default runs: HMSA with a 64-channel attention head (reference: 256), --variants
    "hierarchical_attn64": dict(
        fusion="hierarchical", train_scales=(0.5, 1.0), attention_channels=64
    ),
    # not in the default runs: the attention head at 0.5x only (the default runs it at every
    # training scale for its BatchNorm statistics, as the reference's two_scale_forward)
    "hierarchical_fused_bn": dict(
        fusion="hierarchical", train_scales=(0.5, 1.0), attention_bn="fused_scales"
    ),
}
CONFIGS = {
    "mnv2_256x512": dict(
        model=dict(trunk="mobilenetv2", alpha=1.0),
        crop=(256, 512),
        batch=2,
        variants=("single", "hierarchical", "hierarchical3", "explicit"),
    ),
    "r50_256x512": dict(
        model=dict(trunk="resnet50"),
        crop=(256, 512),
        batch=1,
        variants=("single", "hierarchical", "hierarchical3", "explicit"),
    ),
    "r50_512x1024": dict(
        model=dict(trunk="resnet50"), crop=(512, 1024), batch=1, variants=("single", "hierarchical")
    ),
    "quickstart": dict(
        model=dict(
            trunk="mobilenetv2",
            alpha=0.35,
            aspp_channels=64,
            decoder_channels=64,
            attention_channels=64,
        ),
        crop=(128, 128),
        batch=8,
        variants=("single", "hierarchical"),
    ),
    "hrnet_w48_256x512": dict(
        model=dict(trunk="hrnetv2_w48"),
        crop=(256, 512),
        batch=1,
        variants=("single", "hierarchical"),
    ),
    "tiny": dict(
        model=dict(
            trunk="mobilenetv2",
            alpha=0.35,
            aspp_channels=8,
            decoder_channels=8,
            attention_channels=8,
            low_level_channels=8,
        ),
        crop=(64, 128),
        batch=1,
        variants=("single", "hierarchical", "hierarchical3", "explicit"),
    ),
}
TARGETS = {
    "hierarchical_time_ratio": 1.30,
    "hierarchical_memory_ratio": 1.35,
    "r50_512x1024_hierarchical_peak_rss_gb": 4.0,
    "r50_matmul_fraction": 0.5,
}


def build(config, variant):
    import keras

    import hmsa_keras

    keras.utils.set_random_seed(0)
    model = hmsa_keras.build_model(
        num_classes=NUM_CLASSES, **{**config["model"], **VARIANTS[variant]}
    )
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss="ce")
    model.optimizer.build(model.trainable_variables)
    return model


def batch(config):
    import tensorflow as tf

    h, w = config["crop"]
    g = tf.random.Generator.from_seed(1)
    images = g.normal([config["batch"], h, w, 3])
    labels = g.uniform([config["batch"], h, w], 0, NUM_CLASSES, dtype=tf.int32)
    return images, labels


def make_step(model):
    import tensorflow as tf

    fn = tf.function(model.train_step)
    return lambda data: float(fn(data)["loss"])  # float() waits for the step to finish


# ----------------------------------------------------------------------------- memory worker
def memory_worker(config_name, variant):
    """Runs in a fresh process: prints one JSON line with baseline/peak RSS and step times."""
    config = CONFIGS[config_name]
    import tensorflow as tf  # noqa: F401  (import cost is not part of the baseline's meaning)

    model = build(config, variant)
    data = batch(config)
    baseline = common.rss_mb()
    step = make_step(model)
    times = []
    for i in range(3):
        t = time.perf_counter()
        loss = step(data)
        times.append(time.perf_counter() - t)
    peak = common.peak_rss_mb()
    print(
        "MEMORY_JSON "
        + json.dumps(
            {
                "config": config_name,
                "variant": variant,
                "baseline_mb": baseline,
                "peak_mb": peak,
                "train_extra_mb": peak - baseline,
                "step_seconds": times,
                "loss": loss,
            }
        ),
        flush=True,
    )


def measure_memory(config_name, variant, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory_worker", f"{config_name}:{variant}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": config_name, "variant": variant, "error": f"timed out after {timeout}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_JSON "):
            return json.loads(line[len("MEMORY_JSON ") :])
    return {
        "config": config_name,
        "variant": variant,
        "error": (
            f"exit {proc.returncode}: "
            f"{proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}"
        ),
    }


# ----------------------------------------------------------------------------- timing
def time_config(config_name, rounds, matmul_n):
    """Interleaved step timing + FLOPs of every variant of a config, in this process."""
    import keras

    config = CONFIGS[config_name]
    h, w = config["crop"]
    data = batch(config)
    models, steps = {}, {}
    for v in config["variants"]:
        models[v] = build(config, v)
    # FLOPs of the very train-step graph that is timed (static shapes: the batch is fixed)
    flops = {
        v: common.train_step_flops(models[v], config["batch"], h, w) for v in config["variants"]
    }
    for v in config["variants"]:
        steps[v] = make_step(models[v])
        for _ in range(2):  # trace + one warm step
            steps[v](data)
    times = {v: [] for v in config["variants"]}
    mm_rates = []
    order = list(config["variants"]) + ["matmul"]
    for r in range(rounds):
        rot = order[r % len(order) :] + order[: r % len(order)]
        for v in rot:
            if v == "matmul":
                mm_rates += common.matmul_rate(matmul_n, repeats=3)[1]
                continue
            t = time.perf_counter()
            steps[v](data)
            times[v].append(time.perf_counter() - t)
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{v} {times[v][-1]:.3f}s" for v in config["variants"]),
            flush=True,
        )
    del models
    keras.backend.clear_session()
    return times, flops, mm_rates


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, few rounds (CI smoke run)"
    )
    parser.add_argument("--configs", default=None, help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated, replacing each config's own list (single is always run): "
        + ", ".join(VARIANTS),
    )
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 3; --quick 2)")
    parser.add_argument(
        "--matmul_n", type=int, default=0, help="matmul size (default 2048; --quick 512)"
    )
    parser.add_argument(
        "--memory_jobs",
        type=int,
        default=0,
        help="memory subprocesses at once (default 1; --quick 3)",
    )
    parser.add_argument("--memory_timeout", type=int, default=1800)
    parser.add_argument("--out_dir", default=None)
    parser.add_argument("--memory_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        return memory_worker(*args.memory_worker.split(":"))

    names = (
        args.configs.split(",")
        if args.configs
        else (["tiny"] if args.quick else ["r50_256x512", "mnv2_256x512", "r50_512x1024"])
    )
    if args.variants:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = set(chosen) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown --variants {sorted(unknown)}; allowed: {', '.join(VARIANTS)}")
        for name in names:
            CONFIGS[name]["variants"] = tuple(["single"] + [v for v in chosen if v != "single"])
    rounds = args.rounds or (2 if args.quick else 3)
    matmul_n = args.matmul_n or (512 if args.quick else 2048)
    jobs = args.memory_jobs or (3 if args.quick else 1)
    out_dir = args.out_dir or (
        tempfile.mkdtemp(prefix="hmsa_train_cost_")
        if args.quick
        else str(REPO / "benchmarks" / "results")
    )
    path = os.path.join(out_dir, "train_cost.json")

    import tensorflow as tf

    report = {
        "benchmark": "train_cost",
        "quick": bool(args.quick),
        "machine": common.machine_info(),
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "rounds": rounds,
        "matmul_n": matmul_n,
        "targets": TARGETS,
        "configs": {},
    }
    print(
        f"hmsa_keras training cost benchmark: {report['machine']['cpu']}, "
        f"{report['machine']['logical_cpus']} CPUs, TF {tf.__version__}, rounds={rounds}",
        flush=True,
    )
    for name in names:
        config = CONFIGS[name]
        print(
            f"== {name}: {config['model']}, crop {config['crop']}, batch {config['batch']}",
            flush=True,
        )
        times, flops, mm_rates = time_config(name, rounds, matmul_n)
        with ThreadPoolExecutor(jobs) as pool:
            mems = list(
                pool.map(lambda v: measure_memory(name, v, args.memory_timeout), config["variants"])
            )
        mm = common.median(mm_rates)
        entry = {
            "model": config["model"],
            "crop": list(config["crop"]),
            "batch": config["batch"],
            "matmul_gflops_median": mm,
            "matmul_gflops_runs": mm_rates,
            "variants": {},
        }
        base_t = common.median(times["single"])
        base_mem = next((m for m in mems if m["variant"] == "single"), {})
        for v, mem in zip(config["variants"], mems):
            t = common.median(times[v])
            gflops = flops[v] / t / 1e9
            row = {
                "step_seconds_median": t,
                "step_seconds_runs": times[v],
                "time_ratio": t / base_t,
                "train_flops": flops[v],
                "achieved_gflops": gflops,
                "matmul_fraction": gflops / mm,
                "pixels_ratio": sum(s * s for s in VARIANTS[v]["train_scales"]),
                "memory": mem,
            }
            if "error" not in mem and "error" not in base_mem:
                row["peak_rss_ratio"] = mem["peak_mb"] / base_mem["peak_mb"]
                row["train_extra_ratio"] = mem["train_extra_mb"] / base_mem["train_extra_mb"]
            entry["variants"][v] = row
        report["configs"][name] = entry
        print_table(name, entry)
        common.write_json(report, path)  # partial results survive an interrupted run
    report["checks"] = checks(report)
    for c in report["checks"]:
        print(
            f"[{'PASS' if c['ok'] else 'MISS'}] {c['name']}: {c['value']:.3f} "
            f"(target {c['target']})"
        )
    common.write_json(report, path)
    print(f"RESULT_JSON {path}", flush=True)
    return report


def print_table(name, entry):
    print(f"-- {name}: matmul {entry['matmul_gflops_median']:.1f} GFLOP/s")
    print(
        f"   {'variant':13s} {'step s':>8s} {'x single':>8s} {'px x':>5s} {'GFLOP':>8s} "
        f"{'GFLOP/s':>8s} "
        f"{'%mm':>5s} {'peak MB':>8s} {'x':>5s} {'extra MB':>8s} {'x':>5s}"
    )
    for v, r in entry["variants"].items():
        m = r["memory"]
        mem = (
            (
                f"{m['peak_mb']:8.0f} {r.get('peak_rss_ratio', float('nan')):5.2f} "
                f"{m['train_extra_mb']:8.0f} "
                f"{r.get('train_extra_ratio', float('nan')):5.2f}"
            )
            if "error" not in m
            else f"  memory: {m['error']}"
        )
        print(
            f"   {v:13s} {r['step_seconds_median']:8.3f} {r['time_ratio']:8.2f} "
            f"{r['pixels_ratio']:5.2f} {r['train_flops'] / 1e9:8.1f} {r['achieved_gflops']:8.1f} "
            f"{100 * r['matmul_fraction']:5.1f} {mem}",
            flush=True,
        )


def checks(report):
    out = []
    for name, entry in report["configs"].items():
        h = entry["variants"].get("hierarchical")
        if not h:
            continue
        if "time_ratio" in h:
            out.append(
                {
                    "name": f"{name} hierarchical step time / single",
                    "value": h["time_ratio"],
                    "target": f"<= {TARGETS['hierarchical_time_ratio']}",
                    "ok": h["time_ratio"] <= TARGETS["hierarchical_time_ratio"],
                }
            )
        if "train_extra_ratio" in h:
            out.append(
                {
                    "name": f"{name} hierarchical training memory (peak - baseline) / single",
                    "value": h["train_extra_ratio"],
                    "target": f"<= {TARGETS['hierarchical_memory_ratio']}",
                    "ok": h["train_extra_ratio"] <= TARGETS["hierarchical_memory_ratio"],
                }
            )
            out.append(
                {
                    "name": f"{name} hierarchical peak RSS / single",
                    "value": h["peak_rss_ratio"],
                    "target": f"<= {TARGETS['hierarchical_memory_ratio']}",
                    "ok": h["peak_rss_ratio"] <= TARGETS["hierarchical_memory_ratio"],
                }
            )
        if name == "r50_512x1024" and "error" not in h.get("memory", {"error": "missing"}):
            gb = h["memory"]["peak_mb"] / 1024
            out.append(
                {
                    "name": "r50_512x1024 hierarchical peak RSS (GiB)",
                    "value": gb,
                    "target": f"<= {TARGETS['r50_512x1024_hierarchical_peak_rss_gb']}",
                    "ok": gb <= TARGETS["r50_512x1024_hierarchical_peak_rss_gb"],
                }
            )
        if name.startswith("r50"):
            for v, r in entry["variants"].items():
                if "matmul_fraction" not in r:
                    continue
                out.append(
                    {
                        "name": f"{name} {v} achieved / matmul GFLOP/s",
                        "value": r["matmul_fraction"],
                        "target": f">= {TARGETS['r50_matmul_fraction']} (within 2x)",
                        "ok": r["matmul_fraction"] >= TARGETS["r50_matmul_fraction"],
                    }
                )
    return out


if __name__ == "__main__":
    main()
