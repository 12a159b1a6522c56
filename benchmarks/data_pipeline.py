"""Throughput of the training input pipeline beside the training step's consumption rate.

    python benchmarks/data_pipeline.py [--quick] [--camvid_dir=DIR]

Recipes measured, with the data and model settings of their flagfiles (``flags/*.cfg``,
parsed with hmsa-train's own flags):
  quickstart          synthetic scenes, crop 128x128, batch 8, MobileNetV2 x0.35
  camvid_mobilenetv2  CamVid 480x360, crop 352x480, batch 8, class-uniform 0.5,
                      MobileNetV2 x1.0 (skipped when the data is absent)

Pipeline: each repeat iterates a fresh iterator for a fixed number of batches after a
warm-up; the median over repeats is reported. Training: the recipe's model runs its
compiled ``train_step`` on one fixed batch (no input cost), median step time after two
warm-up steps. The ratio pipeline / training must be >= 2 for the input never to starve
training.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hmsa_keras.data import build_dataset  # noqa: E402

DEFAULT_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
FLAGS_DIR = Path(__file__).resolve().parents[1] / "flags"


def recipe_configs(name, *extra):
    """(ModelConfig, DataConfig, TrainConfig) exactly as
    ``hmsa-train --flagfile=flags/NAME.cfg``."""
    from hmsa_keras.cli import train as train_cli

    return train_cli.configs_from_argv([f"--flagfile={FLAGS_DIR / (name + '.cfg')}", *extra])


def training_rate(model_cfg, data_cfg, batch_size, steps):
    """Images/s consumed by the recipe's compiled train step on one fixed batch (median)."""
    import keras
    import tensorflow as tf

    from hmsa_keras import build_model
    from hmsa_keras.data import get_dataset_info

    model = build_model(model_cfg, num_classes=get_dataset_info(data_cfg).num_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss="ce")
    batch = next(
        iter(build_dataset(data_cfg, data_cfg.train_split, training=True, batch_size=batch_size))
    )
    step = tf.function(model.train_step)
    for _ in range(2):
        step(batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step(batch)["loss"])
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def measure(config, batch_size, batches, repeats, warmup=3):
    """Median images/s (wall clock) and CPU ms per image over ``repeats`` runs.

    CPU time (all threads of this process) per image is reported too: on a
    shared machine it is the steadier figure (wall-clock rates drop when other
    processes compete for the cores).
    """
    rates, cpu_ms = [], []
    ds = build_dataset(config, config.train_split, training=True, batch_size=batch_size)
    for _ in range(repeats):
        it = iter(ds)
        for _ in range(warmup):
            next(it)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        images = batches * batch_size
        rates.append(images / (time.perf_counter() - start))
        cpu_ms.append(1e3 * (time.process_time() - cpu) / images)
    return statistics.median(rates), rates, statistics.median(cpu_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    parser.add_argument("--camvid_dir", default=str(DEFAULT_CAMVID))
    args = parser.parse_args(argv)
    batches, repeats = (10, 3) if args.quick else (40, 5)

    print(
        f"hmsa_keras data pipeline benchmark "
        f"(cpus={os.cpu_count()}, batches={batches}, repeats={repeats})"
    )
    recipes = [("quickstart", recipe_configs("quickstart"))]
    if Path(args.camvid_dir, "train").is_dir():
        recipes.append(
            (
                "camvid_mobilenetv2",
                recipe_configs("camvid_mobilenetv2", f"--data_dir={args.camvid_dir}"),
            )
        )
    else:
        print(f"camvid: skipped ({args.camvid_dir} not found)")
    for name, (model_cfg, data_cfg, train_cfg) in recipes:
        data_cfg = dataclasses.replace(data_cfg, cache_dir=tempfile.mkdtemp(prefix="hmsa_bench_"))
        batch = train_cfg.batch_size
        median, rates, cpu_ms = measure(data_cfg, batch, batches, repeats)
        consumed = training_rate(model_cfg, data_cfg, batch, 2 if args.quick else 3)
        crop = "x".join(map(str, data_cfg.crop_size))
        print(
            f"{name:19s} dataset={data_cfg.dataset:9s} crop={crop:8s} batch={batch}: pipeline "
            f"{median:7.1f} images/s (median; runs: {', '.join(f'{r:.1f}' for r in rates)}; "
            f"CPU {cpu_ms:.1f} ms/image); training step consumes {consumed:.2f} images/s; "
            f"ratio {median / consumed:.1f}x (target >= 2x)"
        )
    if hasattr(os, "getloadavg"):
        print(
            f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus "
            "(wall-clock rates fall when other processes compete)"
        )


if __name__ == "__main__":
    main()
