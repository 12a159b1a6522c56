"""hmsa-convert: a reference (NVIDIA/semantic-segmentation) checkpoint -> an hmsa_keras model.

    hmsa-convert --checkpoint=cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth \\
                 --output_dir=models/cityscapes_hrnet_ocr --dataset=cityscapes
    hmsa-eval --model_dir=models/cityscapes_hrnet_ocr --data_dir=...

Reads ``{'state_dict': ...}`` snapshots (with or without DataParallel's ``module.``),
bare state_dicts (``.pth``, or ``.npz`` without PyTorch) and the HRNetV2 ImageNet trunk
file; writes ``best.keras``, ``config.json`` (dataset, the reference's evaluation chain)
and ``conversion.txt`` (every tensor mapped). Reading ``.pth`` needs PyTorch:
``pip install "hmsa_keras[convert]"``. See docs/hrnet_ocr.md.
"""

from __future__ import annotations

from hmsa_keras.cli.tool import Tool, usage
from hmsa_keras.config import ConvertConfig

TOOL = Tool(name="hmsa-convert", doc=__doc__, options=ConvertConfig)


def main(argv):
    opts = TOOL.config(ConvertConfig)
    for name in ("checkpoint", "output_dir", "dataset"):
        if not getattr(opts, name):
            raise usage(name, "is required")
    from hmsa_keras.convert import CheckpointError, convert_checkpoint

    try:
        result = convert_checkpoint(
            opts.checkpoint,
            opts.output_dir,
            opts.dataset,
            num_classes=opts.num_classes,
            allow_pickle=opts.allow_pickle,
            overwrite=opts.overwrite,
        )
    except (CheckpointError, FileExistsError, ImportError) as exc:
        raise usage(
            "output_dir" if isinstance(exc, FileExistsError) else "checkpoint", str(exc)
        ) from None
    if opts.list_tensors:
        for line in result["mapped"]:
            print(line)
    fresh = result["fresh"]
    print(
        f"{result['kind']} checkpoint: {len(result['mapped'])} tensors mapped, "
        f"{len(result['unused'])} unused, "
        f"{len(fresh)} layers at their initialisation"
        + (f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else "")
    )
    print(f"model: {result['model_path']}\nconfig: {result['config_path']}")
    return 0


def run():
    """Console entry point ``hmsa-convert``."""
    TOOL.run(main)


if __name__ == "__main__":
    run()
