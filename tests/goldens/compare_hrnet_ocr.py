"""Compares hmsa_keras' HRNet-OCR, converted from a golden state_dict, with the reference's
outputs stored by ``make_hrnet_ocr_golden.py`` (no PyTorch needed).

    PYTHONPATH=. python tests/goldens/compare_hrnet_ocr.py --golden=tests/goldens/hrnet_ocr_tiny

prints the largest absolute difference per output. ``tests/test_hrnet_ocr.py`` asserts them;
this script also serves the one-off full-width (W48) run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "hrnet_ocr_tiny")


def chain_key(chain):
    return "_".join(f"{s:g}" for s in chain)


class Golden:
    """The three files of a golden: ``<prefix>.json``, ``_state_dict.npz``, ``_outputs.npz``."""

    def __init__(self, prefix=TINY):
        with open(prefix + ".json") as f:
            self.meta = json.load(f)
        self.state_dict_path = prefix + "_state_dict.npz"
        with np.load(prefix + "_outputs.npz") as data:
            self.outputs = {k: data[k] for k in data.files}
        self.image = self.outputs["image"]
        self.per_scale = tuple(float(s) for s in self.meta["per_scale"].split(","))
        self.chains = tuple(tuple(c) for c in self.meta["chains"])


def convert(golden):
    """The golden state_dict converted in memory with hmsa_keras.convert (dataset cityscapes,
    the golden's class count); returns the HMSA model."""
    from hmsa_keras.convert import load_checkpoint

    result = load_checkpoint(golden.state_dict_path, "cityscapes", golden.meta["num_classes"])
    if result["fresh"] or result["unused"]:
        raise AssertionError(
            f"golden conversion left {result['fresh']} fresh, {result['unused']} unused"
        )
    return result["model"]


def _max_abs(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} vs reference {b.shape}")
    return float(np.abs(a - b).max())


def per_scale_differences(model, golden):
    """{output name: max |ours - reference|} for every scale of ``golden.per_scale``:
    logits, aux logits and the attention (sigmoid, then upsampled, as the reference) at the
    scale's input size, and the attention head's output at stride 4."""
    import keras
    import tensorflow as tf

    from hmsa_keras.models import fusion as F

    images = tf.constant(golden.image)
    net = model.network
    head = keras.Model(net.input, net.get_layer("attn_out").output)  # stride 4, before the sigmoid
    outputs = model.run_scales(images, golden.per_scale)
    diffs = {}
    for s, (logits, attention, aux) in outputs.items():
        ref = f"scale_{s:g}"
        diffs[f"{ref}_logits"] = _max_abs(logits, golden.outputs[f"{ref}_logits"])
        diffs[f"{ref}_aux_logits"] = _max_abs(aux, golden.outputs[f"{ref}_aux_logits"])
        diffs[f"{ref}_attention"] = _max_abs(attention, golden.outputs[f"{ref}_attention"])
        x = images if s == 1.0 else F.resize(images, F.scaled_size(images, s))
        diffs[f"{ref}_attention_logits_s4"] = _max_abs(
            head(x), golden.outputs[f"{ref}_attention_logits_s4"]
        )
    return diffs


def fused_differences(model, golden, chain, flip):
    """max |HMSA.segment logits - reference nscale_forward| for one chain (and flip)."""
    logits = model.segment(golden.image, chain, flip=flip)["logits"]
    return _max_abs(logits, golden.outputs[f"fused_{chain_key(chain)}_flip{int(flip)}"])


def training_differences(model, golden):
    """The reference's two_scale_forward (scales 0.5, 1.0; eval-mode layers; cross-entropy):
    fused aux logits and total loss 1.0 CE(fused) + 0.4 CE(fused aux) + 0.05 (CE(U(L_0.5)) +
    CE(L_1.0)) against ours (HMSA.compute_loss_terms)."""
    import tensorflow as tf

    from hmsa_keras.models import fusion as F

    train = golden.meta["train"]
    model.compile(
        optimizer="sgd",
        loss="ce",
        aux_weight=train["ocr_alpha"],
        scale_loss_weight=train["supervised_mscale_wt"],
    )
    images = tf.constant(golden.image)
    labels = tf.constant(golden.outputs["train_labels"])
    total, _, _ = model.compute_loss_terms(images, labels, training=False)
    outputs = model.run_scales(images, (train["lo_scale"], 1.0))
    aux = F.fuse(
        {s: (o[2], o[1]) for s, o in outputs.items()}, "hierarchical", tf.shape(images)[1:3]
    )
    return {
        "train_fused_aux": _max_abs(aux, golden.outputs["train_fused_aux"]),
        "train_loss": _max_abs(total, golden.outputs["train_loss"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golden", default=TINY, help="file prefix of the golden")
    args = parser.parse_args(argv)
    golden = Golden(args.golden)
    model = convert(golden)
    diffs = per_scale_differences(model, golden)
    for chain in golden.chains:
        for flip in (False, True):
            diffs[f"fused_{chain_key(chain)}_flip{int(flip)}"] = fused_differences(
                model, golden, chain, flip
            )
    diffs.update(training_differences(model, golden))
    json.dump(dict(golden=args.golden, max_abs_difference=diffs), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
