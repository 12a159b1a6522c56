"""Inference latency of HMSA scale chains: Keras (tf.function), SavedModel and TFLite.

    python benchmarks/inference.py [--quick] [--sizes=512x1024,1024x2048] [--backends=keras,saved_model,tflite]
                                   [--repeats=N] [--out_dir=DIR]

Model: MobileNetV2 alpha 1.0, output stride 16, DeepLabV3+ heads with 256 channels,
19 classes (Cityscapes-like), HMSA hierarchical fusion, float32, random weights
(latency does not depend on the weights). ``--quick``: alpha 0.35, 8-channel heads, 64x128.

Chains: (1.0), (0.5, 1.0), (0.5, 1.0, 2.0) and (0.5, 1.0, 2.0) + flip, batch 1.

Backends:

  keras        ``tf.function(lambda x: model.segment(x, scales, flip)["classes"])`` on a
               normalised float32 batch with a fixed input signature
  saved_model  :func:`hmsa_keras.export.export_saved_model` (one export per chain: its
               chain and flip are fixed at export), reloaded, ``serving_default`` on uint8
  tflite       ``HMSAExportModule.tflite_function(fixed_size)`` converted with
               ``TFLiteConverter.from_concrete_functions``, TFLITE_BUILTINS only, float32,
               run with ``ai_edge_litert`` (2 threads; XNNPACK is its default CPU delegate)

Each repeat round times one call of every (backend, chain), in rotating order, after a
warm-up call each, plus a 2048x2048 float32 matmul (the machine's dense rate in the same
run). Reported: median latency, and achieved GFLOP/s = forward FLOPs (TensorFlow's
profiler on the segmenter's graph at each scale's static size, summed over the chain, x2
with flip) / median latency. ``--quick`` runs the exported backends for the (0.5, 1.0)
chain only. The 1024x2048 size (full mode) runs the Keras backend only,
chains (1.0) and (0.5, 1.0) (0.5+1.0+2.0 would run the network at 2048x4096: ~4 TFLOP
per call, minutes per call on this CPU).

Writes ``inference.json`` to ``--out_dir`` (default benchmarks/results; a temporary
directory with ``--quick``). Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
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
LARGE_CHAINS = (((1.0,), False), ((0.5, 1.0), False))


def chain_name(scales, flip):
    return "+".join(f"{s:g}" for s in scales) + (" flip" if flip else "")


def build_model(quick):
    import keras

    import hmsa_keras

    keras.utils.set_random_seed(0)
    kw = dict(alpha=0.35, aspp_channels=8, decoder_channels=8, attention_channels=8,
              low_level_channels=8) if quick else dict(alpha=1.0)
    return hmsa_keras.build_model(num_classes=NUM_CLASSES, trunk="mobilenetv2", **kw), kw


def keras_runner(model, size, scales, flip):
    import tensorflow as tf

    fn = tf.function(lambda x: model.segment(x, scales=scales, flip=flip)["classes"],
                     input_signature=[tf.TensorSpec([1, *size, 3], tf.float32)])
    x = tf.random.normal([1, *size, 3], seed=1)
    return lambda: fn(x).numpy()


def saved_model_runner(model, size, scales, flip, work_dir):
    import numpy as np
    import tensorflow as tf

    from hmsa_keras.export.saved_model import export_saved_model

    path = os.path.join(work_dir, f"sm_{chain_name(scales, flip).replace(' ', '_').replace('+', '_')}")
    export_saved_model(model, path, scales=scales, flip=flip)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    x = tf.constant(np.random.default_rng(1).integers(0, 256, (1, *size, 3), dtype=np.uint8))
    return lambda: fn(images=x)["classes"].numpy()


def tflite_runner(model, size, scales, flip, threads=2):
    import numpy as np
    import tensorflow as tf

    from hmsa_keras.export.saved_model import HMSAExportModule

    module = HMSAExportModule(model, scales, flip)
    cf = module.tflite_function(fixed_size=size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([cf], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flat = converter.convert()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover
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


def forward_flops(network, size, scales, flip, cache):
    total = 0
    for s in scales:
        hw = common.scaled(*size, s)
        if hw not in cache:
            cache[hw] = common.network_flops(network, 1, *hw, NUM_CLASSES, training=False)
        total += cache[hw]
    return total * (2 if flip else 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model at 64x128 (CI smoke run)")
    parser.add_argument("--sizes", default=None, help="HxW list (default 512x1024,1024x2048; --quick 64x128)")
    parser.add_argument("--backends", default="keras,saved_model,tflite")
    parser.add_argument("--repeats", type=int, default=0, help="timed rounds (default 3; --quick 2)")
    parser.add_argument("--matmul_n", type=int, default=0, help="matmul size (default 2048; --quick 512)")
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in
             (args.sizes or ("64x128" if args.quick else "512x1024,1024x2048")).split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    repeats = args.repeats or (2 if args.quick else 3)
    matmul_n = args.matmul_n or (512 if args.quick else 2048)
    out_dir = args.out_dir or (tempfile.mkdtemp(prefix="hmsa_inference_") if args.quick
                               else str(REPO / "benchmarks" / "results"))
    path = os.path.join(out_dir, "inference.json")
    work_dir = tempfile.mkdtemp(prefix="hmsa_inference_work_")

    import tensorflow as tf

    model, model_kw = build_model(args.quick)
    report = {"benchmark": "inference", "quick": bool(args.quick), "machine": common.machine_info(),
              "model": {"trunk": "mobilenetv2", **model_kw, "num_classes": NUM_CLASSES, "batch": 1,
                        "fusion": "hierarchical"},
              "repeats": repeats, "matmul_n": matmul_n, "sizes": {}}
    print(f"hmsa_keras inference benchmark: {report['machine']['cpu']}, {report['machine']['logical_cpus']} CPUs, "
          f"TF {tf.__version__}, model {report['model']}", flush=True)
    flops_cache = {}
    try:
        for size in sizes:
            large = size[0] * size[1] > 512 * 1024
            chains = LARGE_CHAINS if large else CHAINS
            size_backends = ["keras"] if large else backends
            key = f"{size[0]}x{size[1]}"
            print(f"== {key}: building runners for {size_backends}", flush=True)
            runners, extra = {}, {}
            for scales, flip in chains:
                name = chain_name(scales, flip)
                for b in size_backends:
                    if args.quick and b != "keras" and (scales, flip) != ((0.5, 1.0), False):
                        continue  # quick: exported backends only for the training chain
                    tic = time.perf_counter()
                    try:
                        if b == "keras":
                            runners[(b, name)] = keras_runner(model, size, scales, flip)
                        elif b == "saved_model":
                            runners[(b, name)] = saved_model_runner(model, size, scales, flip, work_dir)
                        elif b == "tflite":
                            runners[(b, name)], nbytes = tflite_runner(model, size, scales, flip)
                            extra[(b, name)] = {"tflite_bytes": nbytes}
                        else:
                            raise ValueError(f"unknown backend {b!r}")
                        runners[(b, name)]()  # warm-up (tracing / allocation)
                        extra.setdefault((b, name), {})["setup_seconds"] = time.perf_counter() - tic
                    except Exception as e:  # report, keep going with the other backends
                        extra[(b, name)] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                        runners.pop((b, name), None)
                        print(f"   {b} {name}: FAILED {extra[(b, name)]['error']}", flush=True)
            times = {k: [] for k in runners}
            mm = []
            order = list(runners) + ["matmul"]
            for r in range(repeats):
                rot = order[r % len(order):] + order[:r % len(order)]
                for k in rot:
                    if k == "matmul":
                        mm += common.matmul_rate(matmul_n, repeats=3)[1]
                        continue
                    t = time.perf_counter()
                    runners[k]()
                    times[k].append(time.perf_counter() - t)
                print(f"   round {r + 1}/{repeats} done", flush=True)
            mm_rate = common.median(mm)
            entry = {"matmul_gflops_median": mm_rate, "matmul_gflops_runs": mm, "chains": {}}
            for scales, flip in chains:
                name = chain_name(scales, flip)
                flops = forward_flops(model.network, size, scales, flip, flops_cache)
                row = {"scales": list(scales), "flip": flip, "forward_flops": flops, "backends": {}}
                for b in size_backends:
                    k = (b, name)
                    if args.quick and k not in times and k not in extra:
                        continue
                    cell = dict(extra.get(k, {}))
                    if k in times:
                        t = common.median(times[k])
                        cell.update(latency_seconds_median=t, latency_seconds_runs=times[k],
                                    achieved_gflops=flops / t / 1e9, matmul_fraction=flops / t / 1e9 / mm_rate)
                    row["backends"][b] = cell
                entry["chains"][name] = row
            base = {b: entry["chains"][chain_name(*chains[0])]["backends"].get(b, {}).get("latency_seconds_median")
                    for b in size_backends}
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
    print(f"   {'chain':16s} {'GFLOP':>8s} " + " ".join(f"{b + ' s':>14s} {'GF/s':>6s}" for b in backends))
    for name, row in entry["chains"].items():
        cells = []
        for b in backends:
            c = row["backends"].get(b, {"error": "not run"})
            cells.append(f"{c['latency_seconds_median']:14.3f} {c['achieved_gflops']:6.1f}"
                         if "latency_seconds_median" in c else f"{'-':>14s} {'':6s}")
        print(f"   {name:16s} {row['forward_flops'] / 1e9:8.1f} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
