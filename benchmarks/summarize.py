"""Markdown tables from the benchmark JSON reports (for docs/benchmarks.md).

python benchmarks/summarize.py [--results_dir=benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(results_dir, name):
    path = os.path.join(results_dir, name)
    return json.load(open(path)) if os.path.exists(path) else None


def train_cost_md(report):
    out = []
    for name, e in report["configs"].items():
        out.append(
            f"**{name}** ({', '.join(f'{k}={v}' for k, v in e['model'].items())}, crop "
            f"{e['crop'][0]}x{e['crop'][1]}, batch {e['batch']}; matmul "
            f"{e['matmul_gflops_median']:.1f} GFLOP/s)\n"
        )
        out.append(
            "| variant | pixels | step s (median) | x single | train GFLOP | GFLOP/s | "
            "% of matmul | peak RSS MB | x single | peak - baseline MB | x single |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for v, r in e["variants"].items():
            m = r["memory"]
            mem = (
                f"{m['peak_mb']:.0f} | {r.get('peak_rss_ratio', float('nan')):.2f} | "
                f"{m['train_extra_mb']:.0f} | {r.get('train_extra_ratio', float('nan')):.2f}"
                if "error" not in m
                else f"{m['error']} | | |"
            )
            out.append(
                f"| {v} | {r['pixels_ratio']:.2f}x | {r['step_seconds_median']:.2f} | "
                f"{r['time_ratio']:.2f} | "
                f"{r['train_flops'] / 1e9:.1f} | {r['achieved_gflops']:.1f} | "
                f"{100 * r['matmul_fraction']:.0f}% | {mem} |"
            )
        out.append("")
    if report.get("checks"):
        out.append("| target | measured | target | |")
        out.append("|---|---|---|---|")
        for c in report["checks"]:
            out.append(
                f"| {c['name']} | {c['value']:.2f} | {c['target']} | "
                f"{'hit' if c['ok'] else 'MISS'} |"
            )
    return "\n".join(out)


def inference_md(report):
    out = []
    for key, e in report["sizes"].items():
        order = [
            "keras",
            "saved_model",
            "tflite",
            "tflite_float16",
            "tflite_dynamic_int8",
            "tflite_full_int8",
        ]
        backends = sorted({b for r in e["chains"].values() for b in r["backends"]}, key=order.index)
        out.append(
            f"**{key}** (matmul {e['matmul_gflops_median']:.1f} GFLOP/s; seconds, and GFLOP/s in "
            "brackets)\n"
        )
        out.append("| chain | forward GFLOP | " + " | ".join(backends) + " |")
        out.append("|---|---|" + "---|" * len(backends))
        for name, r in e["chains"].items():
            cells = []
            for b in backends:
                c = r["backends"].get(b, {})
                cells.append(
                    f"{c['latency_seconds_median']:.2f} ({c['achieved_gflops']:.0f})"
                    if "latency_seconds_median" in c
                    else c.get("error", "-")
                )
            out.append(f"| {name} | {r['forward_flops'] / 1e9:.1f} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def atrous_grad_md(report):
    out = [
        "| config | training | dilated convs | step s, hmsa_keras | "
        "step s, TensorFlow's gradients | speed-up | gradients agree to |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in report["configs"].items():
        for v, r in e["variants"].items():
            t = r["step_seconds_median"]
            out.append(
                f"| {name} | {v} | {r['dilated_convolutions']} | {t['hmsa_keras']:.2f} | "
                f"{t['tensorflow']:.2f} | {r['speedup']:.2f}x | "
                f"{r['gradient_max_relative_difference']:.0e} |"
            )
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    tc = _load(args.results_dir, "train_cost.json")
    if tc:
        print("### Training cost\n\n" + train_cost_md(tc) + "\n")
    ag = _load(args.results_dir, "atrous_grad.json")
    if ag:
        print("### Dilated-convolution gradients\n\n" + atrous_grad_md(ag) + "\n")
    inf = _load(args.results_dir, "inference.json")
    if inf:
        print("### Inference latency\n\n" + inference_md(inf) + "\n")
    md = os.path.join(args.results_dir, "accuracy.md")
    if os.path.exists(md):
        print("### Accuracy\n\n" + open(md).read())


if __name__ == "__main__":
    main()
