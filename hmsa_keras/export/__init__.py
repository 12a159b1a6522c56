"""Exporting HMSA models: SavedModel (TF Serving) and TFLite (LiteRT), with a parity report.

    from hmsa_keras.export import export_model
    report = export_model(model, "exported", scales=(0.5, 1.0), flip=False,
                          variants=("saved_model", "float32", "full_int8"),
                          calibration_images=images, eval_images=val_images, eval_labels=val_labels)

See docs/export.md. ``hmsa-export`` (hmsa_keras/cli/export.py) is the command line;
``export/`` at the repository root holds the deployment side (TF Serving README and
clients, the standalone LiteRT runner). Readers: :class:`saved_model.SavedModelSegmenter`,
:class:`tflite.TFLiteSegmenter` (``hmsa-eval --saved_model`` / ``--tflite``).
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("hmsa_keras")

__all__ = ["ALL_VARIANTS", "export_model", "export_saved_model", "tflite_name"]


def export_saved_model(
    model,
    export_dir,
    scales=(0.5, 1.0, 2.0),
    flip=False,
    module=None,
    class_names=None,
    colors=None,
):
    """See :func:`hmsa_keras.export.saved_model.export_saved_model` (imported lazily, so that
    ``import hmsa_keras.export`` stays cheap)."""
    from hmsa_keras.export import saved_model

    return saved_model.export_saved_model(
        model, export_dir, scales, flip, module, class_names, colors
    )


ALL_VARIANTS = ("saved_model", "float32", "float16", "dynamic_int8", "full_int8")
REPORT_FILE = "export_report.json"


def tflite_name(variant, fixed_size=None):
    return (
        f"hmsa_{variant}" + (f"_{fixed_size[0]}x{fixed_size[1]}" if fixed_size else "") + ".tflite"
    )


def export_model(
    model,
    output_dir,
    scales=(0.5, 1.0, 2.0),
    flip=False,
    variants=ALL_VARIANTS,
    fixed_size=None,
    calibration_images=(),
    eval_images=(),
    eval_labels=None,
    latency_size=(512, 1024),
    latency_runs=5,
    threads=2,
    class_names=None,
    colors=None,
    echo=print,
    serving_name="hmsa",
    serving_version=1,
    warmup_size=None,
    tflite_outputs=("classes", "probabilities"),
    calibration_size=None,
    float_ops=(),
    int8_sweep=False,
    int8_target=0.97,
):
    """Writes the chosen variants to ``output_dir`` and returns the report (also written as
    ``export_report.json``).

    The SavedModel goes to ``<output_dir>/<serving_name>/<serving_version>/`` (TF Serving
    layout, warm-up requests at ``warmup_size``, default ``latency_size``). TFLite variants
    come in a dynamic-size version and, with ``fixed_size`` = (h, w), a fixed-size one too;
    ``tflite_outputs`` = ``("classes",)`` leaves the probabilities out; ``float_ops`` keeps
    those op types in float in ``full_int8``; ``calibration_images`` (uint8 RGB) calibrate
    ``full_int8`` (resized to ``calibration_size`` when given). ``eval_images`` (uint8 RGB)
    and ``eval_labels`` give the agreement with the Keras model (at their size, at
    ``latency_size`` and at ``calibration_size``) and the mIoU (see :mod:`report`).
    ``int8_sweep``: also run :func:`report.float_fallback_sweep` (``int8_sweep.json``);
    ``float_ops=("auto",)`` runs it and keeps in float the op type chosen by
    :func:`choose_float_ops` for ``int8_target``.
    """
    import tensorflow as tf

    from hmsa_keras.export import report as R
    from hmsa_keras.export import tflite
    from hmsa_keras.export.saved_model import (
        HMSAExportModule,
        as_float32,
        export_serving,
    )

    unknown = set(variants) - set(ALL_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; allowed: {ALL_VARIANTS}")
    os.makedirs(output_dir, exist_ok=True)
    echo(
        f"Exporting to {output_dir}: {', '.join(v for v in ALL_VARIANTS if v in variants)} "
        f"(chain {','.join(f'{s:g}' for s in scales)}{' + flip' if flip else ''}); each file "
        "is checked against the Keras model as it is written (minutes per variant on a CPU)"
    )
    model = as_float32(model)
    calibration_images = list(calibration_images)
    if calibration_size:
        calibration_images = [
            tflite.resize_uint8(img, calibration_size) for img in calibration_images
        ]
    module = HMSAExportModule(model, scales, flip, class_names, colors)
    eval_set = R.EvalSet(
        model,
        eval_images,
        eval_labels,
        module.scales,
        module.flip,
        latency_size,
        calibration_size,
        class_names=class_names,
    )
    keras_row = {"variant": "keras", "file": "(Keras model)", **eval_set.keras_row()}
    rows = [keras_row]

    def add(row):
        rows.append(row)
        echo(R.format_table([row], eval_set.sizes()).splitlines()[1])

    echo(R.format_table([keras_row], eval_set.sizes()))
    if "saved_model" in variants:
        path = export_serving(
            None,
            output_dir,
            serving_name,
            serving_version,
            module=module,
            warmup_size=warmup_size or latency_size or (64, 64),
        )
        rel = os.path.relpath(path, output_dir)
        add(
            dict(
                variant="saved_model",
                file=rel,
                size_bytes=R.dir_size(path),
                **R.check_saved_model(path, eval_set, latency_size, latency_runs),
            )
        )

    outputs = tuple(tflite_outputs)
    sweep = None
    float_ops = tuple(float_ops)
    if "full_int8" in variants and (int8_sweep or float_ops == ("auto",)):
        echo("\nfull_int8 with one op type at a time kept in float:")
        sweep = R.float_fallback_sweep(
            module,
            calibration_images,
            eval_set,
            latency_size,
            runs=latency_runs,
            threads=threads,
            outputs=outputs,
            echo=echo,
        )
        with open(os.path.join(output_dir, "int8_sweep.json"), "w") as f:
            json.dump(sweep, f, indent=2)
        if float_ops == ("auto",):
            float_ops = choose_float_ops(sweep, int8_target)
            echo(
                f"--float_ops=auto: {','.join(float_ops) or 'none'} "
                f"(target {100 * int8_target:.1f}% agreement "
                f"at {eval_set.sizes().get('deploy', eval_set.sizes().get('val', '?'))})\n"
            )
    for variant in [v for v in variants if v != "saved_model"]:
        for size in [None] + ([tuple(fixed_size)] if fixed_size else []):
            name = tflite_name(variant, size)
            path = os.path.join(output_dir, name)
            ops = tuple(float_ops) if variant == "full_int8" else ()
            content = tflite.convert(
                module,
                variant,
                fixed_size=size,
                representative_images=calibration_images,
                outputs=outputs,
                float_ops=ops,
            )
            bad = tflite.non_builtin_ops(content)
            if bad:
                raise RuntimeError(
                    f"{name}: non-builtin ops {bad} (Flex/custom ops are not allowed)"
                )
            calibration = None
            if variant == "full_int8":
                calibration = {
                    "images": len(calibration_images),
                    "size": "x".join(map(str, (size or calibration_images[0].shape[:2]))),
                }
            content, _ = tflite.write_tflite(path, module, variant, content, size, ops, calibration)
            add(
                dict(
                    variant=variant,
                    file=name,
                    fixed_size=list(size) if size else None,
                    size_bytes=len(content),
                    builtin_ops_only=True,
                    outputs=list(outputs),
                    float_ops=list(ops),
                    **R.check_tflite(path, eval_set, latency_size, latency_runs, threads),
                )
            )

    tflite_rows = [
        r for r in rows if r["file"].endswith(".tflite") and r.get("latency_s") is not None
    ]
    if len(tflite_rows) > 1:  # the ratios matter: time the files again side by side
        medians = R.interleaved_latency(
            [os.path.join(output_dir, r["file"]) for r in tflite_rows],
            tuple(latency_size),
            latency_runs,
            threads,
        )
        base = next(
            (r for r in tflite_rows if r["variant"] == "float32" and not r.get("fixed_size")), None
        )
        for r in tflite_rows:
            r["latency_s"] = medians[os.path.join(output_dir, r["file"])]
        for r in tflite_rows:
            if base is not None:
                r["latency_vs_float32"] = r["latency_s"] / base["latency_s"]
        echo(
            "\nTFLite latency, interleaved rounds (medians): "
            + ", ".join(
                f"{r['file']} {1000 * r['latency_s']:.0f} ms"
                + (
                    f" ({r['latency_vs_float32']:.2f}x float32)"
                    if "latency_vs_float32" in r
                    else ""
                )
                for r in tflite_rows
            )
        )

    labels = {
        "names": list(module.class_names),
        "colors": module.colors,
        "scales": list(module.scales),
        "flip": module.flip,
    }
    with open(os.path.join(output_dir, "labels.json"), "w") as f:
        json.dump(labels, f, indent=2)
    result = {
        "scales": list(module.scales),
        "flip": module.flip,
        "num_classes": module.num_classes,
        "eval_images": len(list(eval_images)),
        "eval_sizes": eval_set.sizes(),
        "calibration_images": len(calibration_images),
        "calibration_size": "x".join(map(str, calibration_images[0].shape[:2]))
        if calibration_images
        else None,
        "latency_threads": threads,
        "latency_runs": latency_runs,
        "tensorflow": tf.__version__,
        "artefacts": rows,
        "int8_sweep": sweep,
    }
    with open(os.path.join(output_dir, REPORT_FILE), "w") as f:
        json.dump(result, f, indent=2)
    return result


def choose_float_ops(sweep, target=0.97):
    """The op types to keep in float, from :func:`report.float_fallback_sweep` rows: none
    when the all-int8 file reaches ``target`` agreement (at the deployment size when it was
    measured, else at the validation images' size); else the single op type whose float
    fallback gives the highest agreement, if it improves on all-int8 by at least 0.1 point.
    One step only: a second op type would multiply the conversions, and one type was
    enough in our measurements (docs/export.md)."""

    def score(row):
        return row.get("agreement_deploy", row.get("agreement")) or 0.0

    plain = next((r for r in sweep if not r["float_ops"]), None)
    if plain is None or score(plain) >= target:
        return ()
    best = max((r for r in sweep if len(r["float_ops"]) == 1), key=score, default=None)
    if best is None or score(best) < score(plain) + 0.001:
        return ()
    return tuple(best["float_ops"])
