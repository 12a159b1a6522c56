"""Throughput of the training input pipeline, in images per second.

    python benchmarks/data_pipeline.py [--quick] [--camvid_dir=DIR]

Recipes measured (training pipeline: sampling, decode, augmentation, batching):
  quickstart  synthetic scenes 128x128, crop 128x128, batch 8 (the DataConfig defaults)
  camvid      CamVid 480x360, crop 256x320, batch 4, scale 0.5-2, flip, jitter 0.25,
              class-uniform fraction 0.5 (skipped when the data is absent)

Each repeat iterates a fresh iterator for a fixed number of batches after a
warm-up; the median over repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hmsa_keras.config import DataConfig  # noqa: E402
from hmsa_keras.data import build_dataset  # noqa: E402

DEFAULT_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    parser.add_argument("--camvid_dir", default=str(DEFAULT_CAMVID))
    args = parser.parse_args(argv)
    batches, repeats = (10, 3) if args.quick else (40, 5)

    print(f"hmsa_keras data pipeline benchmark (cpus={os.cpu_count()}, batches={batches}, repeats={repeats})")
    recipes = [("quickstart", DataConfig(), 8)]
    if Path(args.camvid_dir, "train").is_dir():
        cache = tempfile.mkdtemp(prefix="hmsa_bench_")
        recipes.append(("camvid", DataConfig(dataset="camvid", data_dir=args.camvid_dir, crop_size=(256, 320),
                                             class_uniform_fraction=0.5, cache_dir=cache), 4))
    else:
        print(f"camvid: skipped ({args.camvid_dir} not found)")
    for name, config, batch in recipes:
        median, rates, cpu_ms = measure(config, batch, batches, repeats)
        crop = "x".join(map(str, config.crop_size))
        print(f"{name:11s} dataset={config.dataset:9s} crop={crop:8s} batch={batch}: "
              f"{median:7.1f} images/s (median; runs: {', '.join(f'{r:.1f}' for r in rates)}); "
              f"CPU {cpu_ms:.1f} ms/image")
    if hasattr(os, "getloadavg"):
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus "
              "(wall-clock rates fall when other processes compete)")


if __name__ == "__main__":
    main()
