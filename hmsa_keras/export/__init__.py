"""Exporting HMSA models: SavedModel (TF Serving) and TFLite (LiteRT), with a parity report.

    from hmsa_keras.export import export_model
    report = export_model(model, "exported", scales=(0.5, 1.0, 2.0), flip=False,
                          variants=("saved_model", "float32", "full_int8"),
                          calibration_images=crops, eval_images=val_images)

See docs/export.md. ``hmsa-export`` (hmsa_keras/cli/export.py) is the command line;
``export/`` at the repository root holds the deployment side (TF Serving README and
client, the standalone LiteRT runner).
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("hmsa_keras")

__all__ = ["ALL_VARIANTS", "export_model", "export_saved_model", "tflite_name"]


def export_saved_model(model, export_dir, scales=(0.5, 1.0, 2.0), flip=False, module=None):
    """See :func:`hmsa_keras.export.saved_model.export_saved_model` (imported lazily, so that
    ``import hmsa_keras.export`` stays cheap)."""
    from hmsa_keras.export import saved_model

    return saved_model.export_saved_model(model, export_dir, scales, flip, module)

ALL_VARIANTS = ("saved_model", "float32", "float16", "dynamic_int8", "full_int8")
REPORT_FILE = "export_report.json"
SAVED_MODEL_DIR = "saved_model"


def tflite_name(variant, fixed_size=None):
    return f"hmsa_{variant}" + (f"_{fixed_size[0]}x{fixed_size[1]}" if fixed_size else "") + ".tflite"


def export_model(model, output_dir, scales=(0.5, 1.0, 2.0), flip=False, variants=ALL_VARIANTS,
                 fixed_size=None, calibration_images=(), eval_images=(), latency_size=(512, 1024),
                 latency_runs=5, threads=2, class_names=None, colors=None, echo=print):
    """Writes the chosen variants to ``output_dir`` and returns the report (also written as
    ``export_report.json``). TFLite variants come in a dynamic-size version and, with
    ``fixed_size`` = (h, w), a fixed-size one too. ``eval_images`` (uint8 RGB) are used for
    the agreement with the Keras model; ``calibration_images`` for ``full_int8``."""
    import tensorflow as tf

    from hmsa_keras.export import report as R
    from hmsa_keras.export import tflite
    from hmsa_keras.export.saved_model import HMSAExportModule, as_float32

    unknown = set(variants) - set(ALL_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; allowed: {ALL_VARIANTS}")
    os.makedirs(output_dir, exist_ok=True)
    model = as_float32(model)
    eval_images = list(eval_images)
    references = R.keras_classes(model, eval_images, scales, flip)
    fixed_eval = fixed_refs = None
    if fixed_size:
        fixed_eval = [R.resize_image(img, fixed_size) for img in eval_images]
        fixed_refs = R.keras_classes(model, fixed_eval, scales, flip)

    rows = []

    def add(row):
        rows.append(row)
        echo(R.format_table([row]).splitlines()[1])

    echo(R.format_table([]))
    module = HMSAExportModule(model, scales, flip)
    if "saved_model" in variants:
        path = export_saved_model(model, os.path.join(output_dir, SAVED_MODEL_DIR), module=module)
        add(dict(variant="saved_model", file=SAVED_MODEL_DIR, size_bytes=R.dir_size(path),
                 **R.check_saved_model(path, eval_images, references, latency_size, latency_runs)))

    for variant in [v for v in variants if v != "saved_model"]:
        for size in [None] + ([tuple(fixed_size)] if fixed_size else []):
            name = tflite_name(variant, size)
            path = os.path.join(output_dir, name)
            content = tflite.convert(module, variant, fixed_size=size, representative_images=calibration_images)
            bad = tflite.non_builtin_ops(content)
            if bad:
                raise RuntimeError(f"{name}: non-builtin ops {bad} (Flex/custom ops are not allowed)")
            with open(path, "wb") as f:
                f.write(content)
            images, refs = (fixed_eval, fixed_refs) if size else (eval_images, references)
            add(dict(variant=variant, file=name, fixed_size=list(size) if size else None,
                     size_bytes=len(content), builtin_ops_only=True,
                     **R.check_tflite(path, images, refs, latency_size, latency_runs, threads)))

    labels = {"names": list(class_names or [f"class_{i}" for i in range(model.num_classes)]),
              "colors": [list(map(int, c)) for c in (colors or [])],
              "scales": list(module.scales), "flip": module.flip}
    with open(os.path.join(output_dir, "labels.json"), "w") as f:
        json.dump(labels, f, indent=2)
    result = {"scales": list(module.scales), "flip": module.flip, "num_classes": module.num_classes,
              "eval_images": len(eval_images), "calibration_images": len(list(calibration_images)),
              "latency_threads": threads, "latency_runs": latency_runs,
              "tensorflow": tf.__version__, "artefacts": rows}
    with open(os.path.join(output_dir, REPORT_FILE), "w") as f:
        json.dump(result, f, indent=2)
    return result
