"""Op-level profile of the two-scale training step (or the 0.5,1.0,2.0 inference chain) of
benchmarks/vs_reference.py's models, ours or the reference's.

    python benchmarks/profiling/profile_vs_reference.py ours [--part=train] [--size=256x512]
        [--batch=2] [--precision=float32] [--steps=2] [--top=25] [--json=PATH]
    /work/venv-torch/bin/python benchmarks/profiling/profile_vs_reference.py reference
        --reference_dir=/work/ref/semantic-segmentation [same options]

ours: ``tf.profiler.experimental`` trace of ``steps`` compiled steps after two warm-ups; the
``.xplane.pb`` is parsed and every TensorFlow op's time summed by op type, by op name and by
part of the network (trunk / aspp / decoder / seg head / attention head / loss / optimizer,
forward or backward). reference: ``torch.profiler`` (CPU), self time by ATen op.
Shares are of the summed op time; the wall time per step is printed beside it (ops of the
two threads overlap, so op time can exceed wall time).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import vs_reference as V  # noqa: E402

PARTS = (
    ("attn_", "attention"),
    ("attention_logits", "attention"),
    ("seg_", "seg_head"),
    ("logits", "seg_head"),
    ("aspp_", "aspp"),
    ("decoder_", "decoder"),
    ("trunk", "trunk"),
    ("conv", "trunk"),
    ("SGD", "optimizer"),
    ("sgd", "optimizer"),
    ("optimizer", "optimizer"),
)


def part_of(name):
    low = name.lower()
    direction = "bwd" if "gradient" in low or "grad" in low.split("/")[0] else "fwd"
    for key, part in PARTS:
        if key.lower() in low:
            return direction, part
    if "loss" in low or "sparse_categorical" in low or "cross" in low:
        return direction, "loss"
    return direction, "other"


def profile_ours(args):
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    opts = {
        "reference_dir": "",
        "threads": args.threads,
        "train_size": V.parse_hw(args.size),
        "train_batch": args.batch,
        "infer_size": V.parse_hw(args.size),
    }
    worker = V.OursWorker(opts)
    if args.part == "train":
        run = worker._train_runner(args.precision)
    else:
        run, _ = worker._infer_runner("keras", args.precision)
    run()
    run()
    logdir = os.path.join(
        os.environ.get("HMSA_PROFILE_DIR", "/tmp/hmsa_profile"), "vs_reference_ours"
    )
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(logdir)
    tic = time.perf_counter()
    for _ in range(args.steps):
        run()
    wall = (time.perf_counter() - tic) / args.steps
    tf.profiler.experimental.stop()
    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    space = xplane_pb2.XSpace()
    space.ParseFromString(open(path, "rb").read())
    by_type, by_name, by_part = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in space.planes:
        meta = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and "TensorFlow Ops" not in line.name:
                continue
            for ev in line.events:
                name = meta.get(ev.metadata_id, "")
                if ":" not in name or "::" in name:  # executor bookkeeping, not an op
                    continue
                op_name, op_type = name.rsplit(":", 1)
                seconds = ev.duration_ps / 1e12 / args.steps
                by_type[op_type] += seconds
                by_name[name] += seconds
                by_part["/".join(part_of(op_name))] += seconds
    return wall, by_type, by_name, by_part


def profile_reference(args):
    import torch
    from torch.profiler import ProfilerActivity, profile

    opts = {
        "reference_dir": args.reference_dir,
        "threads": args.threads,
        "train_size": V.parse_hw(args.size),
        "train_batch": args.batch,
        "infer_size": V.parse_hw(args.size),
    }
    worker = V.TorchWorker(opts)
    bf16 = args.precision != "float32"
    run = worker._train_runner(bf16) if args.part == "train" else worker._infer_runner(bf16)
    run()
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tic = time.perf_counter()
        for _ in range(args.steps):
            run()
        wall = (time.perf_counter() - tic) / args.steps
    by_type = collections.Counter()
    for evt in prof.key_averages():
        by_type[evt.key] += evt.self_cpu_time_total / 1e6 / args.steps
    del torch
    return wall, by_type, collections.Counter(), collections.Counter()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("side", choices=("ours", "reference"))
    parser.add_argument("--reference_dir", default="/work/ref/semantic-segmentation")
    parser.add_argument("--part", default="train", choices=("train", "infer"))
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--threads", type=int, default=0, help="threads (0: the framework's default)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    wall, by_type, by_name, by_part = (profile_ours if args.side == "ours" else profile_reference)(
        args
    )
    total = sum(by_type.values())
    print(
        f"== {args.side} {args.part} {args.size} batch {args.batch} {args.precision}: "
        f"wall {wall:.3f} s/step, "
        f"op time {total:.3f} s/step (load {os.getloadavg()[0]:.1f})"
    )
    for title, counter in (("op type", by_type), ("part", by_part), ("op", by_name)):
        if not counter:
            continue
        print(f"-- by {title}")
        for key, seconds in counter.most_common(args.top):
            print(f"   {seconds:8.3f} s {100 * seconds / total:5.1f}%  {key[:140]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "wall": wall,
                    "total": total,
                    "by_type": by_type,
                    "by_part": by_part,
                    "by_name": dict(by_name.most_common(200)),
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
