"""Regenerates the HRNet-OCR parity golden from a checkout of the reference (PyTorch).

    /work/venv-torch/bin/python tests/goldens/make_hrnet_ocr_golden.py \\
        --reference_dir=/path/to/NVIDIA/semantic-segmentation --reference_commit=<sha>

Needs only ``torch`` and ``numpy`` (not hmsa_keras). It imports the reference's own
``network/ocrnet.py: MscaleOCR`` (``HRNet_Mscale``) with its ``config.py`` set to a
reduced width, and at run time replaces the pieces that need CUDA/apex/runx/OpenCV by
plain PyTorch stand-ins (``apex.amp.float_function`` -> identity, ``apex.parallel``
SyncBatchNorm -> ``nn.BatchNorm2d``, ``runx.logx`` -> silent, ``utils.misc.fmt_scale``
-> a local formatter, ``numpy.int`` -> ``int``); the reference files are not modified.

The network gets random weights (Kaiming-normal convolutions, random BN affine
parameters) whose BatchNorm statistics are then estimated on random images (so they are
far from 0/1), all rounded to float16-representable values, and runs in eval mode on a
normalised 97x131 image. Written to ``--output_dir`` (default: this folder):

- ``<name>_state_dict.npz``: the reference ``state_dict`` (keys as ``net.state_dict()``;
  float tensors stored as float16, exactly);
- ``<name>_outputs.npz``: the input image and the reference outputs, NHWC float32:
  per scale ``s`` of ``--per_scale`` (``scale_<s>_logits``, ``_aux_logits``,
  ``_attention`` (the reference's: sigmoid at stride 4, then upsampled),
  ``_attention_logits_s4`` (pre-sigmoid, stride 4)); per chain ``c`` and flip ``f``
  ``fused_<c>_flip<f>`` (``MscaleOCR.nscale_forward``; flip averaged as in the
  reference's ``utils/trnval_utils.py: eval_minibatch``); the training-mode two-scale
  fusion (``two_scale_forward``) with a plain cross-entropy criterion: ``train_fused_aux``
  and ``train_loss`` for ``train_labels``;
- ``<name>.json``: options, reference commit, torch version, sizes.

``--preset=w48`` builds the full HRNetV2-W48 + OCR (19 classes) instead, for the one-off
full-width parity run (its files are large: write them outside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np

PRESETS = {
    # width 4, small OCR/attention: a few MB; the stem and stage 1 keep their 64 channels
    "tiny": dict(
        hrnet_width=4,
        num_classes=3,
        ocr_mid_channels=32,
        ocr_key_channels=16,
        attention_channels=16,
        height=97,
        width=131,
        per_scale="0.25,0.5,1.0",
    ),
    "w48": dict(
        hrnet_width=48,
        num_classes=19,
        ocr_mid_channels=512,
        ocr_key_channels=256,
        attention_channels=256,
        height=193,
        width=257,
        per_scale="0.5,1.0",
    ),
}
CHAINS = ((0.5, 1.0), (0.25, 0.5, 1.0, 2.0))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def install_stand_ins():
    """Plain-PyTorch stand-ins for the reference's CUDA/apex/runx/OpenCV-only imports."""
    import torch.nn as nn

    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    logx = types.SimpleNamespace(
        msg=lambda *a, **k: None,
        metric=lambda *a, **k: None,
        add_image=lambda *a, **k: None,
        save_model=lambda *a, **k: None,
    )
    module("runx", logx=module("runx.logx", logx=logx))
    amp = module("apex.amp", float_function=lambda f: f)
    parallel = module(
        "apex.parallel",
        SyncBatchNorm=nn.BatchNorm2d,
        DistributedDataParallel=nn.parallel.DistributedDataParallel,
    )
    module("apex", amp=amp, parallel=parallel)

    def fmt_scale(prefix, scale):  # key names of the reference's output dicts
        return f"{prefix}_{float(scale)}x"

    module("utils.misc", fmt_scale=fmt_scale)
    if not hasattr(np, "int"):  # network/hrnetv2.py uses the removed alias np.int
        np.int = int


def configure(cfg, opts, torch):
    import torch.nn as nn

    cfg.MODEL.BNFUNC = nn.BatchNorm2d
    cfg.OPTIONS.TORCH_VERSION = float(".".join(torch.__version__.split(".")[:2]))
    cfg.MODEL.HRNET_CHECKPOINT = ""  # no ImageNet weights
    cfg.DATASET.NUM_CLASSES = opts["num_classes"]
    cfg.MODEL.OCR.MID_CHANNELS = opts["ocr_mid_channels"]
    cfg.MODEL.OCR.KEY_CHANNELS = opts["ocr_key_channels"]
    cfg.MODEL.SEGATTN_BOT_CH = opts["attention_channels"]
    cfg.MODEL.MSCALE_LO_SCALE = 0.5
    cfg.LOSS.SUPERVISED_MSCALE_WT = 0.05
    w = opts["hrnet_width"]
    for stage, branches in (("STAGE2", 2), ("STAGE3", 3), ("STAGE4", 4)):
        cfg.MODEL.OCR_EXTRA[stage]["NUM_CHANNELS"] = [w * 2**b for b in range(branches)]


def randomise(net, torch, generator, height, width, calibration_batches=3):
    """Random weights, then BN statistics estimated on random images; float16-exact values."""
    import torch.nn as nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                )
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
                m.momentum = None  # cumulative average over the calibration batches
        # Residual branches start small (as in "zero-init residual" training, and as trained
        # HRNets end up): activations stay O(1) through the ~100 layers, so that float32
        # rounding (PyTorch or TensorFlow) stays far below the parity tolerance.
        for m in net.modules():
            last = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None)
            if isinstance(last, nn.BatchNorm2d) and hasattr(m, "downsample"):
                last.weight.copy_(0.1 + 0.2 * torch.rand(last.weight.shape, generator=generator))
        for name, m in net.named_modules():  # likewise the terms added by the fusions
            if ".fuse_layers." in name and isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.2 + 0.3 * torch.rand(m.weight.shape, generator=generator))
        images = [
            torch.from_numpy(random_image(generator, 2, height, width)).permute(0, 3, 1, 2)
            for _ in range(calibration_batches)
        ]

        def calibrate_bn():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
            net.train()
            for batch in images:
                net._fwd(batch)
            net.eval()
            # Channels (or layers: the OCR context mixes only K class centres) that are
            # nearly constant on random images would amplify float32 rounding: floor them.
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.clamp_(min=max(0.25 * float(m.running_var.median()), 0.1))

        def rescale(conv, output, target_std):
            """Scales a last 1x1 convolution so that its output has about ``target_std``."""
            factor = target_std / float(output.std())
            conv.weight.mul_(factor)
            if conv.bias is not None:
                conv.bias.mul_(factor)

        # Logits of a few units and attention logits of about +-2 (not saturated), like a
        # trained network: random deep networks otherwise grow them to tens of units.
        calibrate_bn()
        hook = {}
        handle = net.scale_attn.conv2.register_forward_hook(
            lambda m, i, o: hook.__setitem__("a", o)
        )
        rescale(net.ocr.aux_head[2], net._fwd(images[0])["aux_out"], 1.0)
        calibrate_bn()  # the layers after the soft object regions see new statistics
        res = net._fwd(images[0])
        rescale(net.ocr.cls_head, res["cls_out"], 1.0)
        rescale(net.scale_attn.conv2, hook["a"], 1.0)
        handle.remove()
        for tensor in list(net.parameters()) + list(net.buffers()):
            if tensor.dtype == torch.float32:
                tensor.copy_(tensor.half().float())


def random_image(generator, batch, height, width, cell=16):
    """A smooth random RGB image in [0, 1] (bilinear upsampling of a random grid with one
    node every ``cell`` pixels, plus 2% noise), mean/std-normalised, float16-exact; NHWC
    float32. Smooth like a photograph, so float32 rounding of the resampling coordinates
    (PyTorch's and TensorFlow's alike) moves the values little."""
    import torch

    grid = torch.rand((batch, 3, height // cell + 2, width // cell + 2), generator=generator)
    smooth = torch.nn.functional.interpolate(
        grid.double(), size=(height, width), mode="bilinear", align_corners=True
    )
    noise = torch.rand((batch, 3, height, width), generator=generator).double()
    pixels = (0.98 * smooth + 0.02 * noise).permute(0, 2, 3, 1).numpy()
    return ((pixels - MEAN) / STD).astype(np.float16).astype(np.float32)


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def chain_key(chain):
    return "_".join(f"{s:g}" for s in chain)


def run(args):
    opts = dict(PRESETS[args.preset])
    sys.path.insert(0, os.path.abspath(args.reference_dir))
    install_stand_ins()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    from config import cfg

    configure(cfg, opts, torch)
    from network import ocrnet
    from network.mynn import ResizeX

    generator = torch.Generator().manual_seed(args.seed)
    net = ocrnet.HRNet_Mscale(num_classes=opts["num_classes"], criterion=None)
    h, w = opts["height"], opts["width"]
    randomise(net, torch, generator, h, w)
    dtype = getattr(torch, args.reference_dtype)
    net.to(dtype)  # float64: the reference's exact values, so only our float32 error is tested

    image = random_image(generator, 1, h, w)
    x = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous().to(dtype)
    out = {"image": image}

    stride4 = {}
    net.scale_attn.conv2.register_forward_hook(lambda m, i, o: stride4.__setitem__("a", o))
    with torch.no_grad():
        for s in (float(v) for v in opts["per_scale"].split(",")):
            res = net._fwd(ResizeX(x, s) if s != 1.0 else x)
            out[f"scale_{s:g}_logits"] = nhwc(res["cls_out"])
            out[f"scale_{s:g}_aux_logits"] = nhwc(res["aux_out"])
            out[f"scale_{s:g}_attention"] = nhwc(res["logit_attn"])
            out[f"scale_{s:g}_attention_logits_s4"] = nhwc(stride4["a"])

    def fused(chain, flip):
        pred = net.nscale_forward({"images": x}, list(chain))["pred"]
        if flip:  # eval_minibatch: logits of the mirrored image flipped back, averaged
            mirrored = net.nscale_forward({"images": torch.flip(x, [3])}, list(chain))["pred"]
            pred = 0.5 * (pred + torch.flip(mirrored, [3]))
        return nhwc(pred)

    labels = torch.randint(0, opts["num_classes"], (1, h, w), generator=generator)
    labels[:, : h // 8] = 255  # some ignored pixels
    out["train_labels"] = labels.numpy().astype(np.int32)

    def train_fusion():
        """two_scale_forward in training mode (eval-mode layers), criterion = plain CE."""
        seen = []

        def criterion(logits, gts, do_rmi=None):
            seen.append(logits)
            return F.cross_entropy(logits, gts, ignore_index=255)

        net.criterion = criterion
        net.training = True  # this module only: its layers stay in eval mode
        try:
            loss = net.two_scale_forward({"images": x, "gts": labels})
        finally:
            net.training = False
        # call order in two_scale_forward: aux, main, then the two supervised scales
        return nhwc(seen[1]), nhwc(seen[0]), np.float32(loss.item())

    # The reference as it is (its attention head ends in a Sigmoid, upsampled after it:
    # hmsa_keras follows the same order). Stored: every chain with and without flip, and the
    # training fusion (two_scale_forward).
    results = {}
    with torch.no_grad():
        for chain in CHAINS:
            for flip in (False, True):
                results[f"fused_{chain_key(chain)}_flip{int(flip)}"] = fused(chain, flip)
        results["train_fused"], results["train_fused_aux"], results["train_loss"] = train_fusion()
    out.update({k: v for k, v in results.items() if k != "train_fused"})
    # two_scale_forward (training) and nscale_forward (inference) fuse (0.5, 1.0) alike:
    train_vs_eval = float(np.abs(results["train_fused"] - results["fused_0.5_1_flip0"]).max())

    os.makedirs(args.output_dir, exist_ok=True)
    name = args.name or f"hrnet_ocr_{args.preset}"
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    # float16 holds the values exactly (see randomise)
    state = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in state.items()}
    np.savez_compressed(os.path.join(args.output_dir, f"{name}_state_dict.npz"), **state)
    np.savez_compressed(os.path.join(args.output_dir, f"{name}_outputs.npz"), **out)
    meta = dict(
        opts,
        preset=args.preset,
        seed=args.seed,
        reference_dtype=args.reference_dtype,
        chains=[list(c) for c in CHAINS],
        reference="NVIDIA/semantic-segmentation",
        reference_commit=args.reference_commit,
        reference_arch="ocrnet.HRNet_Mscale",
        torch_version=torch.__version__,
        parameters=int(sum(p.numel() for p in net.parameters())),
        train_vs_eval_fusion_max_abs=train_vs_eval,
        train=dict(
            fusion="two_scale_forward",
            lo_scale=0.5,
            ocr_alpha=float(cfg.LOSS.OCR_ALPHA),
            supervised_mscale_wt=float(cfg.LOSS.SUPERVISED_MSCALE_WT),
            criterion="cross_entropy",
        ),
    )
    with open(os.path.join(args.output_dir, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(
        json.dumps(
            {
                k: meta[k]
                for k in (
                    "preset",
                    "parameters",
                    "reference_commit",
                    "train_vs_eval_fusion_max_abs",
                )
            },
            indent=1,
        )
    )


def reference_commit(path):
    try:
        return subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], check=True, text=True, capture_output=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference_dir",
        required=True,
        help="checkout of NVIDIA/semantic-segmentation (holds network/ and config.py)",
    )
    parser.add_argument(
        "--reference_commit",
        default=None,
        help="commit of that checkout (default: git rev-parse HEAD in it)",
    )
    parser.add_argument("--output_dir", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--name", default=None, help="file name stem (default hrnet_ocr_<preset>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reference_dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision the reference runs in (the weights are the same)",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.reference_dir, "network", "ocrnet.py")):
        parser.error(f"--reference_dir={args.reference_dir}: no network/ocrnet.py there")
    args.reference_commit = args.reference_commit or reference_commit(args.reference_dir)
    if not args.reference_commit:
        parser.error(f"{args.reference_dir} is not a git checkout: give --reference_commit")
    run(args)


if __name__ == "__main__":
    main()
