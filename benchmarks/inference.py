"""Inference latency of HMSA scale chains: Keras (tf.function), SavedModel and TFLite.

    python benchmarks/inference.py [--quick] [--sizes=512x1024,1024x2048]
                                   [--backends=keras,saved_model,tflite] [--repeats=N]
                                   [--out_dir=DIR]

Model: MobileNetV2 alpha 1.0, output stride 16, DeepLabV3+ heads with 256 channels,
19 classes (Cityscapes-like), HMSA hierarchical fusion, float32, random weights
(latency does not depend on the weights). ``--quick``: alpha 0.35, 8-channel heads, 64x128.

Chains: (1.0), (0.5, 1.0), (0.5, 1.0, 2.0) and (0.5, 1.0, 2.0) + flip, batch 1.

Backends:

  keras        ``tf.function(lambda x: model.segment(x, scales, flip)["classes"])`` on a
               normalised float32 batch with a fixed input signature
  saved_model  :func:`hmsa_keras.export.export_saved_model` (one export per chain: its
               chain and flip are fixed at export), reloaded, ``serving_default`` on uint8
  tflite, tflite_float16, tflite_dynamic_int8, tflite_full_int8
               :func:`hmsa_keras.export.tflite.convert` of the chain at a fixed input size
               (float32, float16 weights, int8 weights, int8 weights and activations
               calibrated on 2 built-in synthetic scenes: latency only, agreement is
               measured by ``hmsa-export``), run with ``ai_edge_litert`` (2 threads;
               XNNPACK is its default CPU delegate)

Chains run one after the other (their runners are released before the next, which bounds
memory); for each, every repeat round times one call of every backend, in rotating order,
after a warm-up call each, plus a 2048x2048 float32 matmul (the machine's dense rate in the
same rounds). Reported: median latency, and achieved GFLOP/s = forward FLOPs (the graph of
``model.segment`` for the chain at the static size, attention only where the chain reads
it, counted by ``common.graph_flops``) / median latency. The exported backends run the training
chain (0.5, 1.0) only with ``--quick`` (default backends keras, saved_model, tflite) and at
sizes above 512x1024, where the 0.5+1.0+2.0 chain runs the network at 2048x4096
(~3 TFLOP per call) and is timed for Keras only.

Writes ``inference.json`` to ``--out_dir`` (default benchmarks/results; a temporary
directory with ``--quick``). Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

NUM_CLASSES = 19
CHAINS = (((1.0,), False), ((0.5, 1.0), False), ((0.5, 1.0, 2.0), False), ((0.5, 1.0, 2.0), True))


def chain_name(scales, flip):
    return "+".join(f"{s:g}" for s in scales) + (" flip" if flip else "")


def build_model(quick):
    import keras

    import hmsa_keras

    keras.utils.set_random_seed(0)
    kw = (
        dict(
            alpha=0.35,
            aspp_channels=8,
            decoder_channels=8,
            attention_channels=8,
            low_level_channels=8,
        )
        if quick
        else dict(alpha=1.0)
    )
    return hmsa_keras.build_model(num_classes=NUM_CLASSES, trunk="mobilenetv2", **kw), kw


def keras_runner(model, size, scales, flip):
    import tensorflow as tf

    fn = tf.function(
        lambda x: model.segment(x, scales=scales, flip=flip)["classes"],
        input_signature=[tf.TensorSpec([1, *size, 3], tf.float32)],
    )
    x = tf.random.normal([1, *size, 3], seed=1)
    return lambda: fn(x).numpy()


def saved_model_runner(model, size, scales, flip, work_dir):
    import numpy as np
    import tensorflow as tf

    from hmsa_keras.export.saved_model import export_saved_model

    path = os.path.join(
        work_dir, f"sm_{chain_name(scales, flip).replace(' ', '_').replace('+', '_')}"
    )
    export_saved_model(model, path, scales=scales, flip=flip)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    x = tf.constant(np.random.default_rng(1).integers(0, 256, (1, *size, 3), dtype=np.uint8))
    return lambda: fn(images=x)["classes"].numpy()


TFLITE_BACKENDS = {
    "tflite": "float32",
    "tflite_float16": "float16",
    "tflite_dynamic_int8": "dynamic_int8",
    "tflite_full_int8": "full_int8",
}


def calibration_images(size, count=2):
    """Built-in synthetic street scenes at ``size`` (uint8) for full-int8 calibration."""
    import numpy as np

    from hmsa_keras.data import synthetic

    return [np.asarray(synthetic.generate(0, "train", i, size=size)[0]) for i in range(count)]


def tflite_runner(model, size, scales, flip, variant, threads=2):
    """Converts the chain with :func:`hmsa_keras.export.tflite.convert` (fixed size) and
    returns (run, file bytes); runs with ai_edge_litert."""
    import numpy as np

    from hmsa_keras.export import tflite
    from hmsa_keras.export.saved_model import HMSAExportModule

    module = HMSAExportModule(model, scales, flip)
    flat = tflite.convert(
        module,
        variant,
        fixed_size=size,
        representative_images=calibration_images(size) if variant == "full_int8" else None,
    )
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_content=flat, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outs = {d["name"]: d["index"] for d in interp.get_output_details()}
    out_index = next((i for n, i in outs.items() if "classes" in n), list(outs.values())[0])
    x = np.random.default_rng(1).integers(0, 256, (1, *size, 3), dtype=np.uint8)

    def run():
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out_index)

    return run, len(flat)


def make_runner(backend, model, size, scales, flip, work_dir):
    """(run, extra facts) for one backend and chain."""
    if backend == "keras":
        return keras_runner(model, size, scales, flip), {}
    if backend == "saved_model":
        return saved_model_runner(model, size, scales, flip, work_dir), {}
    if backend in TFLITE_BACKENDS:
        run, nbytes = tflite_runner(model, size, scales, flip, TFLITE_BACKENDS[backend])
        return run, {"tflite_bytes": nbytes}
    raise ValueError(f"unknown backend {backend!r}")


def forward_flops(model, size, scales, flip):
    """FLOPs of the graph that the Keras backend runs: ``model.segment`` for the chain at a
    static size (every scale, the attention only where the chain reads it, fusion, argmax)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model.segment(x, scales=scales, flip=flip)["classes"])
    return common.graph_flops(fn.get_concrete_function(tf.TensorSpec([1, *size, 3], tf.float32)))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model at 64x128 (CI smoke run)")
    parser.add_argument(
        "--sizes", default=None, help="HxW list (default 512x1024,1024x2048; --quick 64x128)"
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated: keras, saved_model, "
        + ", ".join(TFLITE_BACKENDS)
        + " (default all; --quick keras,saved_model,tflite)",
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed rounds (default 3; --quick 2)"
    )
    parser.add_argument(
        "--matmul_n", type=int, default=0, help="matmul size (default 2048; --quick 512)"
    )
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args(argv)
    sizes = [
        tuple(int(v) for v in s.split("x"))
        for s in (args.sizes or ("64x128" if args.quick else "512x1024,1024x2048")).split(",")
    ]
    backends = [
        b.strip()
        for b in (
            args.backends
            or (
                "keras,saved_model,tflite"
                if args.quick
                else ",".join(["keras", "saved_model", *TFLITE_BACKENDS])
            )
        ).split(",")
        if b.strip()
    ]
    repeats = args.repeats or (2 if args.quick else 3)
    matmul_n = args.matmul_n or (512 if args.quick else 2048)
    out_dir = args.out_dir or (
        tempfile.mkdtemp(prefix="hmsa_inference_")
        if args.quick
        else str(REPO / "benchmarks" / "results")
    )
    path = os.path.join(out_dir, "inference.json")
    work_dir = tempfile.mkdtemp(prefix="hmsa_inference_work_")

    import tensorflow as tf

    model, model_kw = build_model(args.quick)
    report = {
        "benchmark": "inference",
        "quick": bool(args.quick),
        "machine": common.machine_info(),
        "model": {
            "trunk": "mobilenetv2",
            **model_kw,
            "num_classes": NUM_CLASSES,
            "batch": 1,
            "fusion": "hierarchical",
        },
        "repeats": repeats,
        "matmul_n": matmul_n,
        "sizes": {},
    }
    print(
        f"hmsa_keras inference benchmark: {report['machine']['cpu']}, "
        f"{report['machine']['logical_cpus']} CPUs, "
        f"TF {tf.__version__}, model {report['model']}",
        flush=True,
    )
    try:
        for size in sizes:
            large = size[0] * size[1] > 512 * 1024
            chains = CHAINS
            size_backends = backends
            key = f"{size[0]}x{size[1]}"
            print(f"== {key}: backends {size_backends}, one chain at a time", flush=True)
            entry = {"chains": {}, "matmul_gflops_runs": []}
            for scales, flip in chains:  # runners of one chain at a time: bounded memory
                name = chain_name(scales, flip)
                runners, extra = {}, {}
                for b in size_backends:
                    if (
                        (args.quick or large)
                        and b != "keras"
                        and (scales, flip) != ((0.5, 1.0), False)
                    ):
                        # exported backends only for the training chain (quick, or large sizes)
                        continue
                    tic = time.perf_counter()
                    try:
                        runners[b], extra[b] = make_runner(b, model, size, scales, flip, work_dir)
                        runners[b]()  # warm-up (tracing / allocation)
                        extra[b]["setup_seconds"] = time.perf_counter() - tic
                    except Exception as e:  # report, keep going with the other backends
                        extra[b] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                        runners.pop(b, None)
                        print(f"   {b} {name}: FAILED {extra[b]['error']}", flush=True)
                times = {b: [] for b in runners}
                mm = []
                order = list(runners) + ["matmul"]
                for r in range(repeats):
                    for b in order[r % len(order) :] + order[: r % len(order)]:
                        if b == "matmul":
                            mm += common.matmul_rate(matmul_n, repeats=3)[1]
                            continue
                        t = time.perf_counter()
                        runners[b]()
                        times[b].append(time.perf_counter() - t)
                print(
                    f"   {name}: "
                    + ", ".join(f"{b} {common.median(t):.2f}s" for b, t in times.items()),
                    flush=True,
                )
                del runners
                gc.collect()
                flops = forward_flops(model, size, scales, flip)
                row = {
                    "scales": list(scales),
                    "flip": flip,
                    "forward_flops": flops,
                    "matmul_gflops_runs": mm,
                    "backends": {},
                }
                for b, cell in extra.items():
                    if b in times:
                        t = common.median(times[b])
                        cell.update(
                            latency_seconds_median=t,
                            latency_seconds_runs=times[b],
                            achieved_gflops=flops / t / 1e9,
                            matmul_fraction=flops / t / 1e9 / common.median(mm),
                        )
                    row["backends"][b] = cell
                entry["chains"][name] = row
                entry["matmul_gflops_runs"] += mm
            entry["matmul_gflops_median"] = common.median(entry["matmul_gflops_runs"])
            base = {
                b: entry["chains"][chain_name(*chains[0])]["backends"]
                .get(b, {})
                .get("latency_seconds_median")
                for b in size_backends
            }
            for row in entry["chains"].values():
                for b, cell in row["backends"].items():
                    if base.get(b) and "latency_seconds_median" in cell:
                        cell["ratio_to_1.0"] = cell["latency_seconds_median"] / base[b]
            report["sizes"][key] = entry
            print_table(key, entry, size_backends)
            common.write_json(report, path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    common.write_json(report, path)
    print(f"RESULT_JSON {path}", flush=True)
    return report


def print_table(key, entry, backends):
    print(f"-- {key}: matmul {entry['matmul_gflops_median']:.1f} GFLOP/s")
    print(
        f"   {'chain':16s} {'GFLOP':>8s} "
        + " ".join(f"{b + ' s':>14s} {'GF/s':>6s}" for b in backends)
    )
    for name, row in entry["chains"].items():
        cells = []
        for b in backends:
            c = row["backends"].get(b, {"error": "not run"})
            cells.append(
                f"{c['latency_seconds_median']:14.3f} {c['achieved_gflops']:6.1f}"
                if "latency_seconds_median" in c
                else f"{'-':>14s} {'':6s}"
            )
        print(f"   {name:16s} {row['forward_flops'] / 1e9:8.1f} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
