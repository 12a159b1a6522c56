"""Does it matter that the attention head's BatchNorm statistics only see 0.5x features?

    python benchmarks/attention_bn_stats.py --model_dir=runs/quickstart [--batches=100]
                                           [--out_dir=DIR]

The reference runs the attention head at both training scales (``network/mscale.py:
two_scale_forward`` computes the attention in every ``_fwd``), so the moving statistics of
its BatchNorm layers are an average over 0.5x and 1.0x features; this project's training runs
the head at 0.5x only (where its output is used), so its statistics are those of 0.5x features,
and the 1.0x attention of the inference chain 0.5,1.0,2.0 is computed with statistics it never
saw. This script takes a trained run and compares, on the run's validation split:

- ``trained``: the model as trained (attention statistics from 0.5x features);
- ``reference``: the attention head's moving statistics re-estimated the reference's way: the
  training batches of the run's pipeline through the network at 0.5x and then 1.0x in training
  mode, the BatchNorm momentum of the model, ``--batches`` steps (every other BatchNorm layer
  is put back afterwards, so only the attention statistics differ);
- ``control``: the same re-estimation at 0.5x only (what a longer training of this project
  would give), which separates the effect of the 1.0x features from that of re-estimating.

For each: val mIoU of the chains 0.5,1.0 (training) and 0.5,1.0,2.0 (the one that uses the
1.0x attention), in one pass per model (``hmsa_keras.evaluate``). Prints a table and writes
``attention_bn_stats.json``. Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHAINS = ((0.5, 1.0), (0.5, 1.0, 2.0))


def batchnorm_layers(model):
    """(attention BN layers, other BN layers) of an HMSA model's segmenter, trunk included."""
    import keras

    def walk(layer):
        for sub in getattr(layer, "layers", []):
            yield sub
            yield from walk(sub)

    attention, other = [], []
    for layer in walk(model.network):
        if isinstance(layer, keras.layers.BatchNormalization):
            (attention if layer.name.startswith("attn_") else other).append(layer)
    return attention, other


def moving_stats(layers):
    return {
        layer.name: (layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers
    }


def put(layers, stats):
    for layer in layers:
        mean, variance = stats[layer.name]
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)


def reestimate(model, train_ds, scales, batches):
    """Runs ``batches`` training batches through the network at each of ``scales`` (in that
    order, as the reference's two_scale_forward) in training mode: BatchNorm moving statistics
    move, no weight does."""
    import tensorflow as tf

    steps = {
        s: tf.function(lambda x, s=s: model.run_scales(x, (s,), training=True)) for s in scales
    }
    for images, _ in train_ds.take(batches):
        for s in scales:
            steps[s](images)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_dir", required=True, help="a training directory (config.json + best.keras)"
    )
    parser.add_argument(
        "--batches", type=int, default=100, help="training batches of the re-estimation"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args(argv)

    import hmsa_keras
    from hmsa_keras.config import read_run_config
    from hmsa_keras.data import build_dataset, get_dataset_info

    _, data_cfg, train_cfg = read_run_config(args.model_dir)
    if data_cfg is None:
        parser.error(f"--model_dir={args.model_dir}: no config.json (a hmsa-train run is needed)")
    info = get_dataset_info(data_cfg)
    model = hmsa_keras.load_model(args.model_dir)
    attention, other = batchnorm_layers(model)
    if not attention:
        parser.error("the model has no attention BatchNorm layers")
    trained_att, trained_other = moving_stats(attention), moving_stats(other)
    train_ds = build_dataset(
        data_cfg, data_cfg.train_split, training=True, batch_size=args.batch_size
    )
    val_ds = build_dataset(data_cfg, data_cfg.val_split, training=False, batch_size=1)

    variants = {"trained": None, "reference": (0.5, 1.0), "control": (0.5,)}
    report = {
        "benchmark": "attention_bn_stats",
        "model_dir": os.path.abspath(args.model_dir),
        "dataset": data_cfg.dataset,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "bn_momentum": float(attention[0].momentum),
        "variants": {},
    }
    for name, scales in variants.items():
        put(attention, trained_att)
        tic = time.perf_counter()
        if scales:
            reestimate(model, train_ds, scales, args.batches)
            put(other, trained_other)  # only the attention statistics differ between variants
        seconds = time.perf_counter() - tic
        stats = moving_stats(attention)
        shift = {
            layer: float(abs(stats[layer][0] - trained_att[layer][0]).mean()) for layer in stats
        }
        results = hmsa_keras.evaluate(
            model, val_ds, info.num_classes, chains=CHAINS, class_names=info.class_names
        )
        report["variants"][name] = {
            "reestimated_at": list(scales or ()),
            "reestimate_seconds": seconds,
            "mean_abs_moving_mean_shift": shift,
            "miou": {r.name: r.metrics["miou"] for r in results},
        }
        print(
            f"{name:10s} " + "  ".join(f"{r.name}: {r.metrics['miou']:.4f}" for r in results),
            flush=True,
        )
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="hmsa_attention_bn_")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "attention_bn_stats.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"RESULT_JSON {path}")
    return report


if __name__ == "__main__":
    main()
