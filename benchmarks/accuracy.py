"""Accuracy of single-scale vs HMSA training under the same budget, per inference chain.

    python benchmarks/accuracy.py [--quick] [--datasets=synthetic,camvid] [--out_dir=DIR]

For each dataset, two models are trained with :func:`hmsa_keras.training.trainer.train`
and identical configs (same trunk, heads, crop, batch, steps, LR schedule, seed, data
order) except the training fusion:

  single   ``fusion="single"``: one scale (1.0), the plain DeepLabV3+ baseline
  hmsa     ``fusion="hierarchical"``, ``train_scales=(0.5, 1.0)``: the HMSA method

Each model is then evaluated on the whole val split for the inference chains
(1.0), (0.5, 1.0), (0.5, 1.0, 2.0), each without and with flip-TTA. Fusions:

  hmsa / hierarchical   the model's own attention chain (what ``model.segment`` does)
  hmsa / mean           the same HMSA model, plain averaging of the scales' logits
  single / mean         the baseline with classic multi-scale averaging (its attention
                        head was never trained, so hierarchical fusion means nothing for it)

Fusion is computed with :func:`hmsa_keras.models.fusion.fuse` on the outputs of
``model.run_scales`` exactly as ``model.segment`` does (checked on the first batch:
the class maps must agree with ``model.segment``); every scale runs once per image and
all chains are fused from those outputs. Confusion matrices are accumulated with
:func:`hmsa_keras.metrics.confusion_matrix` and summarised with ``compute_metrics``.

Outputs in ``--out_dir`` (default: benchmarks/results, figures in docs/figures; with
``--quick`` a temporary directory): ``accuracy.json``, ``accuracy.md`` (markdown table),
``accuracy.png`` and ``attention_example.png`` (an image, its ground truth, the HMSA
prediction and the 0.5x and 2.0x attention maps). The last line printed is
``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEFAULT_CAMVID = REPO.parent / "shared" / "data" / "camvid"
CHAINS = ((1.0,), (0.5, 1.0), (0.5, 1.0, 2.0))
# (method, fusion) rows of the table
ROWS = (("single", "mean"), ("hmsa", "hierarchical"), ("hmsa", "mean"))


def chain_label(chain, flip=False):
    return "+".join(f"{s:g}" for s in chain) + (" flip" if flip else "")


# ----------------------------------------------------------------------------- budgets
def budgets(args):
    """{dataset: (ModelConfig kwargs, DataConfig kwargs, TrainConfig kwargs)} shared by both
    methods."""
    if args.quick:
        tiny = dict(
            trunk="mobilenetv2",
            alpha=0.35,
            aspp_channels=8,
            decoder_channels=8,
            attention_channels=8,
            low_level_channels=8,
        )
        data = dict(
            dataset="synthetic",
            crop_size=(64, 64),
            synthetic_train_size=8,
            synthetic_val_size=2,
            synthetic_image_size=(64, 96),
            scale_min=0.75,
            scale_max=1.5,
        )
        train = dict(
            batch_size=2,
            epochs=1,
            steps_per_epoch=args.synthetic_steps or 2,
            learning_rate=0.05,
            image_every=0,
        )
        return {"synthetic": (tiny, data, train)}
    out = {}
    heads = dict(
        aspp_channels=32, decoder_channels=32, attention_channels=32, low_level_channels=24
    )
    if "synthetic" in args.datasets:
        out["synthetic"] = (
            dict(trunk="mobilenetv2", alpha=0.35, **heads),
            dict(
                dataset="synthetic",
                crop_size=(96, 96),
                synthetic_train_size=512,
                synthetic_val_size=32,
                scale_min=0.75,
                scale_max=1.5,
            ),
            dict(
                batch_size=4,
                epochs=1,
                steps_per_epoch=args.synthetic_steps or 150,
                learning_rate=0.05,
                warmup_steps=20,
                image_every=0,
            ),
        )
    if "camvid" in args.datasets:
        if not Path(args.camvid_dir, "train").is_dir():
            print(f"camvid: skipped ({args.camvid_dir} not found)", flush=True)
        else:
            out["camvid"] = (
                dict(trunk="mobilenetv2", alpha=0.35, **heads),
                dict(
                    dataset="camvid",
                    data_dir=args.camvid_dir,
                    crop_size=(128, 160),
                    scale_min=0.5,
                    scale_max=2.0,
                    class_uniform_fraction=0.5,
                    eval_long_edge=args.camvid_eval_long_edge
                    if args.camvid_eval_long_edge >= 0
                    else None,
                    cache_dir=os.path.join(args.work_dir, "camvid_cache"),
                ),
                dict(
                    batch_size=4,
                    epochs=1,
                    steps_per_epoch=args.camvid_steps or 150,
                    learning_rate=0.05,
                    warmup_steps=50,
                    image_every=0,
                ),
            )
    return out


# ----------------------------------------------------------------------------- evaluation
def evaluate_chains(model, dataset, num_classes, class_names, fusions, max_images=None):
    """Per (chain, flip, fusion): compute_metrics over the split. One pass over the data."""
    import tensorflow as tf

    from hmsa_keras.metrics import compute_metrics, confusion_matrix
    from hmsa_keras.models import fusion as F

    union = sorted({s for c in CHAINS for s in c})
    combos = [(c, flip, f) for flip in (False, True) for c in CHAINS for f in fusions]

    @tf.function(reduce_retracing=True)
    def predict(images, labels):
        size = tf.shape(images)[1:3]
        plain = model.run_scales(images, union)
        mirrored = model.run_scales(tf.reverse(images, axis=[2]), union)
        cms = []
        for chain, flip, fusion in combos:
            logits = F.fuse_chain(plain, chain, fusion, size, mirrored if flip else None)
            cms.append(confusion_matrix(labels, logits, num_classes))
        return tf.stack(cms)

    total = np.zeros((len(combos), num_classes, num_classes), np.int64)
    checked, n, start = False, 0, time.perf_counter()
    for images, labels in dataset:
        if not checked:  # our fusion == model.segment for the model's own fusion
            for chain in CHAINS:
                for flip in (False, True):
                    ref = model.segment(images, scales=chain, flip=flip)["logits"]
                    mirrored = (
                        model.run_scales(tf.reverse(images, axis=[2]), chain) if flip else None
                    )
                    mine = F.fuse_chain(
                        model.run_scales(images, chain),
                        chain,
                        model.fusion if model.fusion != "single" else "mean",
                        tf.shape(images)[1:3],
                        mirrored,
                    )
                    if model.fusion != "single" or len(chain) == 1:
                        agree = float(
                            tf.reduce_mean(
                                tf.cast(tf.argmax(ref, -1) == tf.argmax(mine, -1), tf.float32)
                            )
                        )
                        if agree < 0.999:
                            raise AssertionError(
                                f"fusion check failed for {chain} flip={flip}: {agree:.4f}"
                            )
            checked = True
        total += predict(images, labels).numpy().astype(np.int64)
        n += int(images.shape[0])
        if max_images and n >= max_images:
            break
    seconds = time.perf_counter() - start
    results = []
    for (chain, flip, fusion), cm in zip(combos, total):
        m = compute_metrics(cm, class_names)
        results.append(
            {
                "chain": list(chain),
                "flip": flip,
                "fusion": fusion,
                "miou": m["miou"],
                "pixel_accuracy": m["pixel_accuracy"],
                "per_class_iou": {c["name"]: c["iou"] for c in m["per_class"]},
            }
        )
    return results, n, seconds


# ----------------------------------------------------------------------------- figures
def plot_accuracy(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(report["datasets"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    labels = [chain_label(c, f) for f in (False, True) for c in CHAINS]
    styles = {
        ("single", "mean"): ("#8c8c8c", "single-scale model, mean fusion"),
        ("hmsa", "hierarchical"): ("#d95f02", "HMSA model, hierarchical attention"),
        ("hmsa", "mean"): ("#1b9e77", "HMSA model, mean fusion"),
    }
    for ax, name in zip(axes[0], datasets):
        rows = report["datasets"][name]["results"]
        x = np.arange(len(labels))
        width = 0.27
        for i, (key, (color, text)) in enumerate(styles.items()):
            vals = []
            for flip in (False, True):
                for c in CHAINS:
                    hit = [
                        r
                        for r in rows
                        if r["method"] == key[0]
                        and r["fusion"] == key[1]
                        and tuple(r["chain"]) == c
                        and r["flip"] == flip
                    ]
                    vals.append(100 * hit[0]["miou"] if hit else np.nan)
            bars = ax.bar(x + (i - 1) * width, vals, width, color=color, label=text)
            for b, v in zip(bars, vals):
                if np.isfinite(v):
                    ax.text(
                        b.get_x() + b.get_width() / 2,
                        v + 0.3,
                        f"{v:.1f}",
                        ha="center",
                        va="bottom",
                        fontsize=6.5,
                        rotation=90,
                    )
        all_vals = [100 * r["miou"] for r in rows if np.isfinite(r["miou"])]
        lo, hi = (min(all_vals), max(all_vals)) if all_vals else (0, 1)
        ax.set_ylim(max(0, lo - 8), hi + 6)
        ax.set_xticks(x, labels, rotation=20, fontsize=8)
        ax.set_ylabel("val mIoU (%)")
        info = report["datasets"][name]
        ax.set_title(
            f"{name}: {info['budget']['steps']} steps x batch {info['budget']['batch_size']}, "
            f"crop {info['budget']['crop']}",
            fontsize=9,
        )
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Inference scale chains: single-scale vs HMSA training, same budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(model, images, labels, info, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hmsa_keras.data.normalization import denormalize
    from hmsa_keras.visualize import colorize

    out = model.segment(images, scales=(0.5, 1.0, 2.0), flip=False, return_details=True)
    image = denormalize(images[0].numpy())
    panels = [
        (image, "image"),
        (colorize(labels[0].numpy(), info.colors), "ground truth"),
        (colorize(out["classes"][0].numpy(), info.colors), "HMSA 0.5+1.0+2.0"),
        (out["attention"][0.5][0, ..., 0].numpy(), "a_0.5: weight of 0.5x (final say)"),
        (out["attention"][2.0][0, ..., 0].numpy(), "a_2.0 (not used by the chain)"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.3))
    for ax, (img, text) in zip(axes, panels):
        if img.ndim == 2:
            im = ax.imshow(img, cmap="viridis", vmin=0, vmax=1)
            fig.colorbar(im, ax=ax, fraction=0.035)
        else:
            ax.imshow(img)
        ax.set_title(text, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def to_markdown(report):
    lines = []
    for name, info in report["datasets"].items():
        b = info["budget"]
        lines.append(
            f"#### {name} (val: {info['num_val_images']} images{b.get('eval_note', '')})\n"
        )
        lines.append(
            f"Budget per model: {b['steps']} steps x batch {b['batch_size']}, crop {b['crop']}, "
            f"{b['model']}; training time single {info['train_seconds']['single']:.0f} s, "
            f"hmsa {info['train_seconds']['hmsa']:.0f} s.\n"
        )
        head = (
            "| model / fusion | "
            + " | ".join(chain_label(c, f) for f in (False, True) for c in CHAINS)
            + " |"
        )
        lines += [head, "|" + "---|" * (1 + 2 * len(CHAINS))]
        for method, fusion in ROWS:
            cells = []
            for flip in (False, True):
                for c in CHAINS:
                    hit = [
                        r
                        for r in info["results"]
                        if r["method"] == method
                        and r["fusion"] == fusion
                        and tuple(r["chain"]) == c
                        and r["flip"] == flip
                    ]
                    cells.append(f"{100 * hit[0]['miou']:.1f}" if hit else "-")
            lines.append(f"| {method} / {fusion} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke run on synthetic data (CI)"
    )
    parser.add_argument("--datasets", default="synthetic,camvid")
    parser.add_argument("--camvid_dir", default=str(DEFAULT_CAMVID))
    parser.add_argument("--synthetic_steps", type=int, default=0, help="0 = default budget (150)")
    parser.add_argument("--camvid_steps", type=int, default=0, help="0 = default budget (150)")
    parser.add_argument(
        "--camvid_eval_long_edge",
        type=int,
        default=240,
        help=(
            "evaluate CamVid resized to this long edge "
            "(default 240, i.e. 240x180; -1 = full 480x360)"
        ),
    )
    parser.add_argument(
        "--out_dir", default=None, help="results (json, md); default benchmarks/results"
    )
    parser.add_argument(
        "--figures_dir", default=None, help="default docs/figures (out_dir with --quick)"
    )
    parser.add_argument(
        "--work_dir", default=None, help="training runs (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="hmsa_accuracy_")
    if args.quick:
        args.out_dir = args.out_dir or tempfile.mkdtemp(prefix="hmsa_accuracy_out_")
        args.figures_dir = args.figures_dir or args.out_dir
    args.out_dir = args.out_dir or str(REPO / "benchmarks" / "results")
    args.figures_dir = args.figures_dir or str(REPO / "docs" / "figures")
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(args.figures_dir, exist_ok=True)

    import keras
    import tensorflow as tf

    from hmsa_keras import api
    from hmsa_keras.config import DataConfig, ModelConfig, TrainConfig
    from hmsa_keras.data import build_dataset, get_dataset_info
    from hmsa_keras.training.trainer import train

    report = {
        "benchmark": "accuracy",
        "quick": bool(args.quick),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "datasets": {},
    }
    figures = ["accuracy.png", "attention_example.png"]
    for name, (model_kw, data_kw, train_kw) in budgets(args).items():
        data_cfg = DataConfig(**data_kw)
        info = get_dataset_info(data_cfg)
        entry = {
            "budget": {
                "model": ", ".join(f"{k}={v}" for k, v in model_kw.items()),
                "crop": "x".join(map(str, data_cfg.crop_size)),
                "batch_size": train_kw["batch_size"],
                "steps": train_kw["steps_per_epoch"],
                "learning_rate": train_kw["learning_rate"],
            },
            "train_seconds": {},
            "results": [],
        }
        if data_cfg.eval_long_edge:
            entry["budget"]["eval_note"] = (
                f", evaluated resized to long edge {data_cfg.eval_long_edge}"
            )
        val_ds = build_dataset(data_cfg, data_cfg.val_split, training=False, batch_size=1)
        for method in ("single", "hmsa"):
            fusion = (
                dict(fusion="single", train_scales=(1.0,))
                if method == "single"
                else dict(fusion="hierarchical", train_scales=(0.5, 1.0))
            )
            model_cfg = ModelConfig(num_classes=info.num_classes, **model_kw, **fusion)
            train_cfg = TrainConfig(
                model_dir=os.path.join(args.work_dir, f"{name}_{method}"), **train_kw
            )
            print(f"== {name}/{method}: training {train_kw['steps_per_epoch']} steps", flush=True)
            tic = time.perf_counter()
            result = train(model_cfg, data_cfg, train_cfg)
            entry["train_seconds"][method] = time.perf_counter() - tic
            entry.setdefault("train_result", {})[method] = {
                k: v for k, v in result.items() if isinstance(v, (int, float))
            }
            model = api.load_model(os.path.join(train_cfg.model_dir, api.LAST_MODEL))
            fusions = ("mean",) if method == "single" else ("hierarchical", "mean")
            print(f"== {name}/{method}: evaluating", flush=True)
            rows, n, secs = evaluate_chains(
                model, val_ds, info.num_classes, info.class_names, fusions
            )
            for r in rows:
                r["method"] = method
                print(
                    f"   {method:6s} {r['fusion']:12s} {chain_label(r['chain'], r['flip']):16s} "
                    f"mIoU {100 * r['miou']:5.1f}",
                    flush=True,
                )
            entry["results"] += rows
            entry["num_val_images"] = n
            entry.setdefault("eval_seconds", {})[method] = secs
            if method == "hmsa":
                images, labels = next(iter(val_ds.skip(min(3, n - 1))))
                title = (
                    f"{name} val image: HMSA (trained on 0.5+1.0) run with 0.5+1.0+2.0; "
                    "chain 2.0 -> 1.0 (a_1.0) -> 0.5 (a_0.5); "
                    "the largest scale's attention is never used"
                )
                for fname in (f"attention_example_{name}.png", "attention_example.png"):
                    plot_attention(
                        model, images, labels, info, os.path.join(args.figures_dir, fname), title
                    )
                figures.append(f"attention_example_{name}.png")
            keras.backend.clear_session()
        report["datasets"][name] = entry
        with open(os.path.join(args.out_dir, "accuracy.json"), "w") as f:  # partial results survive
            json.dump(report, f, indent=1)

    md = to_markdown(report)
    with open(os.path.join(args.out_dir, "accuracy.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    plot_accuracy(report, os.path.join(args.figures_dir, "accuracy.png"))
    report["figures"] = [os.path.join(args.figures_dir, p) for p in figures]
    path = os.path.join(args.out_dir, "accuracy.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"RESULT_JSON {path}", flush=True)
    return report


if __name__ == "__main__":
    main()
