"""Inference latency of an HRNet-OCR model and its ``hmsa-export`` artefacts, side by side.

    python benchmarks/hrnet_ocr_inference.py --model=RUN/best.keras --export_dir=EXPORTED
        [--size=512x1024] [--scales=0.5,1.0] [--rounds=5] [--threads=2] [--out=FILE.json]

Times, batch 1, one call of every backend per round (order rotated each round, after one
warm-up call each, which traces / allocates):

  keras        :func:`hmsa_keras.inference.compiled_segment` (``model.segment`` for the chain,
               a ``tf.function``) on a normalised float32 image, up to the class map
  saved_model  ``EXPORTED/hmsa/1`` (``hmsa-export``'s TF Serving layout), ``serving_default``
               on a uint8 image (normalisation, chain and argmax inside the graph)
  tflite_<v>   each ``EXPORTED/hmsa_<v>.tflite`` (float32, full_int8, ...; dynamic input
               size, resized to ``--size`` once) with ai_edge_litert, ``--threads`` threads
               (XNNPACK, its default CPU delegate), one ``invoke`` per call (pixels in,
               classes and probabilities out, as ``hmsa-export``'s report times it)

The artefacts are made beforehand with ``hmsa-export`` (their conversion and int8 calibration
are not part of the timing), e.g.::

    hmsa-export --model_dir=RUN/best.keras --output_dir=EXPORTED --scales=0.5,1.0 \\
        --variants=saved_model,float32,full_int8 --calibration_size=512x1024 --latency_size=0

Prints medians and writes ``--out`` (JSON: per-round times, medians, ratios to the Keras
model, peak RSS of this process, machine facts). Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402


def runners(model_path, export_dir, size, scales, threads):
    import numpy as np
    import tensorflow as tf

    import hmsa_keras
    from hmsa_keras.conventions import MEAN, STD
    from hmsa_keras.export.litert_runner import LiteRTSegmenter
    from hmsa_keras.inference import compiled_segment

    h, w = size
    pixels = np.random.default_rng(1).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    images = ((pixels / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32)
    out, facts = {}, {}

    model = hmsa_keras.load_model(model_path)
    fn = compiled_segment(model, scales)
    x = tf.constant(images)
    out["keras"] = lambda: fn(x)["classes"].numpy()
    facts["keras"] = {"parameters": int(model.count_params())}

    sm_dirs = sorted(glob.glob(os.path.join(export_dir, "*", "[0-9]*", "saved_model.pb")))
    if sm_dirs:
        path = os.path.dirname(sm_dirs[-1])
        sig = tf.saved_model.load(path).signatures["serving_default"]
        xu = tf.constant(pixels)
        out["saved_model"] = lambda: sig(images=xu)["classes"].numpy()
        facts["saved_model"] = {"path": os.path.relpath(path, export_dir)}

    for path in sorted(glob.glob(os.path.join(export_dir, "hmsa_*.tflite"))):
        variant = os.path.basename(path)[len("hmsa_") : -len(".tflite")]
        seg = LiteRTSegmenter(path, num_threads=threads)
        fh, fw = seg.fixed_size or (h, w)
        if (fh, fw) != (h, w):
            continue  # fixed-size file of another size
        seg._prepare(h, w)
        seg.interpreter.set_tensor(seg.input["index"], seg._feed(pixels[0]))

        def invoke(seg=seg):
            seg.interpreter.invoke()

        out[f"tflite_{variant}"] = invoke
        facts[f"tflite_{variant}"] = {
            "file": os.path.basename(path),
            "bytes": os.path.getsize(path),
        }
    return out, facts


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="the .keras file that was exported")
    parser.add_argument("--export_dir", required=True, help="hmsa-export's --output_dir")
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--scales", default="0.5,1.0")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "hrnet_ocr_inference.json")
    )
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    scales = tuple(float(s) for s in args.scales.split(","))

    import tensorflow as tf

    tic = time.perf_counter()
    run, facts = runners(args.model, args.export_dir, size, scales, args.threads)
    setup = time.perf_counter() - tic
    names = list(run)
    print(
        f"HRNet-OCR inference at {size[0]}x{size[1]}, chain {args.scales}, batch 1: "
        f"{', '.join(names)} "
        f"(set-up {setup:.0f} s)",
        flush=True,
    )
    warm = {}
    for n in names:
        t = time.perf_counter()
        run[n]()
        warm[n] = time.perf_counter() - t
        print(f"   {n}: warm-up {warm[n]:.2f} s", flush=True)
    times = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            run[n]()
            times[n].append(time.perf_counter() - t)
        print(
            f"   round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names),
            flush=True,
        )
    med = {n: common.median(t) for n, t in times.items()}
    report = {
        "benchmark": "hrnet_ocr_inference",
        "machine": common.machine_info(),
        "model": args.model,
        "export_dir": args.export_dir,
        "size": list(size),
        "scales": list(scales),
        "batch": 1,
        "rounds": args.rounds,
        "litert_threads": args.threads,
        "tf_threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "backends": {
            n: {
                **facts.get(n, {}),
                "warmup_seconds": warm[n],
                "seconds_runs": times[n],
                "seconds_median": med[n],
                "ratio_to_keras": med[n] / med["keras"],
            }
            for n in names
        },
        "peak_rss_mb": common.peak_rss_mb(),
    }
    print(
        "-- median latency: "
        + ", ".join(
            f"{n} {1000 * med[n]:.0f} ms ({med[n] / med['keras']:.2f}x keras)" for n in names
        ),
        flush=True,
    )
    common.write_json(report, args.out)
    print(f"RESULT_JSON {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
