"""The configuration schema: frozen dataclasses, the only thing that flows from flags to code.

Every field carries its help text, bounds and choices (:func:`option`); the command-line
tools derive one absl flag per field from these classes (:mod:`hmsa_keras.cli.schema`), so
a new option is one line here and is settable from the command line and from flagfiles.

Run configuration (what a recipe in ``flags/`` sets, written to ``model_dir/config.json``):

- :class:`ModelConfig`: everything :func:`hmsa_keras.build_model` needs;
- :class:`DataConfig`: dataset, augmentation and sampling of the tf.data pipeline;
- :class:`TrainConfig`: optimisation, schedule, precision, distribution, evaluation chain.

Tool options (one class per command-line tool): :class:`EvalConfig` (``hmsa-eval``),
:class:`PredictConfig` (``hmsa-predict``/``hmsa-autolabel``), :class:`ExportConfig`
(``hmsa-export``), :class:`DataToolConfig` (``hmsa-data``).

Derived values (classes from the dataset, synchronized BatchNorm from the replica count,
the LR scaled to the global batch, steps) are resolved once by
:func:`hmsa_keras.training.run_config.resolve` into :class:`Resolved`; nothing mutates a
config after that (the classes are frozen: use ``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Tuple

from hmsa_keras import conventions

TRUNKS = ("mobilenetv2", "resnet50", "resnet101")
OUTPUT_STRIDES = (8, 16)
FUSIONS = ("hierarchical", "explicit", "mean", "max", "single")
ATTENTION_HEADS = ("conv", "deconv")
DATASETS = ("synthetic", "camvid", "cityscapes", "cityscapes_tfds", "mapillary", "folder")
VALIDATE_LEVELS = ("paths", "headers", "full")
LOSSES = ("ce", "rmi")
FREEZE_GROUPS = ("trunk", "seg_head", "attention")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
TILE_BLENDS = ("gaussian", "uniform", "crop")
EXPORT_VARIANTS = ("saved_model", "float32", "float16", "dynamic_int8", "full_int8")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
SCHEDULE_GRANULARITIES = ("iteration", "epoch")


def option(default, help, *, choices=None, lower=None, upper=None, kind=None, aliases=(),
           zero_is_none=False):
    """A dataclass field with its command-line metadata.

    Args:
      default: the default value (written once, here).
      help: one-line help text of the flag.
      choices: allowed values (an enum flag; for int fields the flag takes their strings).
      lower, upper: inclusive bounds of a number (or of every number of a list).
      kind: how a text value is parsed: ``"scales"`` (a scale chain,
        :func:`hmsa_keras.conventions.parse_scales`), ``"hw"`` (``HxW`` or ``H,W``,
        :func:`hmsa_keras.conventions.parse_hw`), ``"floats"`` (comma-separated numbers),
        ``"multi"`` (a repeatable flag). Default: from the field's type.
      aliases: older flag names that still set this field (old flagfiles keep working).
      zero_is_none: for ``Optional[int]`` fields, ``0`` on the command line means ``None``.
    """
    metadata = dict(help=help, choices=tuple(choices) if choices else None, lower=lower, upper=upper,
                    kind=kind, aliases=tuple(aliases), zero_is_none=zero_is_none)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- run configuration
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an :class:`hmsa_keras.HMSA` model (its constructor arguments)."""

    num_classes: Optional[int] = option(
        None, "Classes the model predicts. Default: the dataset's; if given it must match the dataset.",
        lower=1)
    trunk: str = option("mobilenetv2", "Trunk (backbone).", choices=TRUNKS)
    alpha: float = option(1.0, "MobileNetV2 width multiplier.", lower=0.01)
    output_stride: int = option(16, "Trunk output stride (atrous convolution in the last stage(s)).",
                                choices=OUTPUT_STRIDES)
    weights: Optional[str] = option(
        None, "Trunk weights: a local keras.applications weights file, or 'imagenet' (downloads). "
        "Default: random initialisation.")
    bn_momentum: float = option(0.9, "BatchNorm momentum, Keras convention (PyTorch's 0.1 is 0.9 here).",
                                lower=0.0, upper=1.0)
    sync_bn: Optional[bool] = option(
        None, "Synchronized BatchNorm across replicas. Default: on exactly when training runs on more "
        "than one replica (then required: unsynchronized moving statistics diverge).")
    aspp_channels: int = option(256, "Channels of every ASPP branch and of its projection.", lower=1)
    decoder_channels: int = option(256, "Channels of the DeepLabV3+ segmentation head convolutions.",
                                   lower=1)
    low_level_channels: int = option(48, "Channels the stride-4 trunk features are projected to.",
                                     lower=1)
    attention_head: str = option("conv", "Attention head: 'conv' (the reference's) or 'deconv' "
                                 "(transposed convolutions, a student report's variant).",
                                 choices=ATTENTION_HEADS)
    attention_channels: int = option(256, "Channels of the attention head (the reference: 256; 64 "
                                     "makes HMSA training ~1.30x single-scale FLOPs).", lower=1)
    aux_head: bool = option(False, "Auxiliary head on the trunk features (loss weight --aux_weight).")
    dropout: float = option(0.0, "Dropout rate after the ASPP projection.", lower=0.0, upper=0.99)
    fusion: str = option("hierarchical", "Training fusion: hierarchical (HMSA), explicit (softmax over "
                         "scales), mean, max, single (one scale).", choices=FUSIONS)
    train_scales: Tuple[float, ...] = option((0.5, 1.0), "Scales run in training (HMSA: 0.5,1.0).",
                                             kind="scales")

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset choice, augmentation and sampling of the tf.data pipeline (docs/data.md)."""

    dataset: str = option("synthetic", "Dataset (docs/data.md); synthetic needs no files.", choices=DATASETS)
    data_dir: Optional[str] = option(None, "Dataset root folder (not needed for synthetic).")
    train_split: str = option("train", "Training split name.")
    val_split: str = option("val", "Validation split name.")
    crop_size: Tuple[int, int] = option((128, 128), "Training crop HxW (or H,W).", kind="hw")
    pre_size: Optional[int] = option(
        None, "Training: bring the image's long edge to this before the random scale and crop (the "
        "reference's Mapillary recipe: 2177; 0 or unset: off).", lower=0, zero_is_none=True)
    scale_min: float = option(0.5, "Random scale augmentation: lower bound.", lower=0.01)
    scale_max: float = option(2.0, "Random scale augmentation: upper bound.", lower=0.01)
    hflip: bool = option(True, "Random horizontal flip.")
    color_jitter: float = option(0.25, "Colour jitter strength (brightness/contrast/saturation; hue = "
                                 "jitter / 2.5; 0 = off).", lower=0.0)
    blur_prob: float = option(0.0, "Probability of Gaussian blur.", lower=0.0, upper=1.0)
    noise_std: float = option(0.0, "Additive Gaussian noise std, pixel units (0..255).", lower=0.0)
    class_uniform_fraction: float = option(0.0, "Share of training crops centred on class centroids "
                                           "(class-uniform sampling).", lower=0.0, upper=1.0)
    class_uniform_tile: int = option(256, "Label tile size (pixels) of the class centroids (the "
                                     "reference: 1024 on Cityscapes).", lower=1)
    eval_long_edge: Optional[int] = option(
        None, "Resize evaluation images so the long edge is at most this (0 or unset: full size; the "
        "reference uses 2177 for Mapillary).", lower=0, zero_is_none=True)
    eval_upscale: bool = option(False, "Also enlarge evaluation images whose long edge is below "
                                "--eval_long_edge, so every image is evaluated at exactly that long edge "
                                "(the reference's Mapillary evaluation).")
    pseudo_label_dir: Optional[str] = option(
        None, "Folder dataset of auto-labels (hmsa-autolabel) mixed into training.")
    synthetic_train_size: int = option(256, "Images in the synthetic train split.", lower=1)
    synthetic_val_size: int = option(32, "Images in the synthetic val split.", lower=1)
    synthetic_image_size: Tuple[int, int] = option((128, 128), "Size HxW of the synthetic images.",
                                                   kind="hw")
    seed: int = option(0, "Random seed: data order, sampling, augmentation, synthetic scenes and weight "
                       "initialisation.")
    cache_dir: Optional[str] = option(None, "Cache of class-uniform centroids (default "
                                      "~/.cache/hmsa_keras).")
    validate: str = option("headers", "Build-time check of the files: paths | headers (+ sizes, "
                           "readable) | full (decode everything).", choices=VALIDATE_LEVELS)
    tfds_manual_dir: Optional[str] = option(None, "cityscapes_tfds: folder holding the official zips "
                                            "(default: data_dir).")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, precision, distribution, and the run's evaluation chain."""

    model_dir: str = option("runs/quickstart", "Where checkpoints, logs, models and config.json go.")
    batch_size: int = option(8, "Batch size per replica.", lower=1)
    epochs: int = option(1, "Training epochs (passes of steps_per_epoch steps).", lower=1)
    steps_per_epoch: Optional[int] = option(
        None, "Steps per epoch (0 or unset: training images / global batch).", lower=0,
        zero_is_none=True)
    learning_rate: float = option(0.01, "Base learning rate (at --reference_batch_size).", lower=0.0)
    reference_batch_size: Optional[int] = option(
        None, "Global batch the base LR was tuned for; the LR scales linearly to the actual global "
        "batch (0 or unset: no scaling).", lower=0, zero_is_none=True)
    lr_power: float = option(1.0, "Poly LR power (the reference: 2 Cityscapes, 1 Mapillary).", lower=0.0)
    warmup_steps: int = option(0, "Linear LR warm-up steps.", lower=0)
    momentum: float = option(0.9, "SGD momentum.", lower=0.0, upper=1.0)
    weight_decay: float = option(1e-4, "Weight decay coefficient; what it means depends on "
                                 "--weight_decay_mode.", lower=0.0)
    weight_decay_mode: str = option(
        "decoupled", "coupled: L2 added to the gradient before momentum, on every parameter "
        "(torch.optim.SGD, the reference; about 1/(1 - momentum) times stronger at the same coefficient); "
        "decoupled: Keras' w -= lr * wd * w, not on BatchNorm and biases.", choices=WEIGHT_DECAY_MODES)
    lr_schedule_granularity: str = option(
        "iteration", "Poly LR updated every step (iteration), or constant within each epoch like the "
        "reference's LambdaLR (epoch).", choices=SCHEDULE_GRANULARITIES)
    loss: str = option("ce", "Main loss: cross-entropy, or RMI (0.5 BCE + 0.5 RMI).", choices=LOSSES)
    class_weights: Optional[Tuple[float, ...]] = option(None, "Per-class loss weights (one per class).",
                                                        kind="floats", lower=0.0)
    aux_weight: float = option(0.4, "Weight of the fused auxiliary loss.", lower=0.0)
    scale_loss_weight: float = option(0.05, "Weight of each per-scale loss.", lower=0.0)
    freeze: Tuple[str, ...] = option((), "Parts to freeze (repeat the flag): trunk, seg_head, attention.",
                                     choices=FREEZE_GROUPS, kind="multi")
    precision: str = option("float32", "Precision policy.", choices=PRECISIONS)
    strategy: str = option("default", "tf.distribute strategy: default (one device), mirrored (all local "
                           "GPUs, or --num_cpu_replicas logical CPUs), multi_worker (TF_CONFIG).",
                           choices=STRATEGIES)
    num_cpu_replicas: int = option(0, "With --strategy=mirrored on a CPU: this many logical CPU replicas "
                                   "(testing).", lower=0)
    val_every: int = option(1, "Validate every N epochs.", lower=1)
    image_every: int = option(100, "TensorBoard images every N steps (0: once per epoch only).", lower=0)
    checkpoint_every: int = option(0, "Checkpoint every N steps (0: once per epoch).", lower=0)
    eval_scales: Tuple[float, ...] = option(
        (0.5, 1.0), "Inference scale chain of this run: used by validation images, hmsa-eval, "
        "hmsa-predict and hmsa-export unless they are given another.", kind="scales",
        aliases=("export_scales",))
    eval_flip: bool = option(False, "Flip-TTA in the run's inference chain (hmsa-eval, hmsa-predict, "
                             "hmsa-export defaults).")
    export_dir: Optional[str] = option(None, "After training, export a SavedModel of the best model here "
                                       "(chain --eval_scales).")


# Shorthand flags kept for old flagfiles: one value sets several fields unless those are given.
SHORTHANDS = {
    "head_channels": (ModelConfig, ("aspp_channels", "decoder_channels", "attention_channels"),
                      "Sets --aspp_channels, --decoder_channels and --attention_channels at once "
                      "(each of those given explicitly wins)."),
}

RUN_CONFIGS = (ModelConfig, DataConfig, TrainConfig)


# --------------------------------------------------------------------------- tool options
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``hmsa-eval``: what to evaluate, how, and where the metrics go (docs/evaluation.md)."""

    split: Optional[str] = option(None, "Split to evaluate (default: --val_split).")
    sweep: Optional[str] = option(None, "Several chains separated by ';' (e.g. \"1.0;0.5,1.0;0.5,1.0,2.0\")"
                                  ", evaluated in one pass and printed side by side. Replaces --scales.")
    saved_model: Optional[str] = option(None, "Evaluate this exported SavedModel instead of a Keras model "
                                        "(its scale chain was fixed at export).")
    output_dir: Optional[str] = option(None, "Where metrics go (default: <model_dir>/eval/<split>).")
    cityscapes_submission_dir: Optional[str] = option(
        None, "Also write official Cityscapes result PNGs (labelIds, ground-truth size) here.")
    eval_batch_size: int = option(1, "Images per replica step (> 1 only if all images of the split share "
                                  "a size).", lower=1)
    max_images: int = option(0, "Stop after this many images (0: the whole split).", lower=0)
    tile_size: Optional[Tuple[int, int]] = option(
        None, "Tiled inference for images too large for memory: tile HxW (or one number).", kind="hw")
    tile_overlap: int = option(128, "Pixels shared by neighbouring tiles.", lower=0)
    tile_blend: str = option("gaussian", "How overlapping tiles are blended.", choices=TILE_BLENDS)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """``hmsa-predict`` / ``hmsa-autolabel``: inputs, outputs and pseudo-labels (docs/evaluation.md)."""

    input: Optional[str] = option(None, "An image file, a folder of images (not recursive) or a glob.")
    output_dir: Optional[str] = option(None, "Where the per-image outputs go (required unless only "
                                       "--pseudo_label_dir is wanted).")
    visualize: bool = option(True, "Write <stem>_color.png and <stem>_overlay.png.")
    overlay_alpha: float = option(0.5, "Opacity of the colours in the overlay.", lower=0.0, upper=1.0)
    save_raw: bool = option(False, "Write <stem>_label.png: class ids as a single-channel PNG.")
    save_probs: bool = option(False, "Write <stem>_probs.npy: float16 class probabilities [H, W, K].")
    save_attention: bool = option(False, "Write <stem>_attention_<scale>.png per scale of the chain.")
    tile_size: Optional[Tuple[int, int]] = option(
        None, "Tiled inference for large images: tile HxW (or one number); each tile runs the whole chain.",
        kind="hw")
    tile_overlap: int = option(128, "Pixels shared by neighbouring tiles.", lower=0)
    tile_blend: str = option("gaussian", "How overlapping tiles are blended.", choices=TILE_BLENDS)
    eval_upscale: bool = option(False, "Also enlarge evaluation images whose long edge is below "
                                "--eval_long_edge, so every image is evaluated at exactly that long edge "
                                "(the reference's Mapillary evaluation).")
    pseudo_label_dir: Optional[str] = option(None, "Also write pseudo-labels as a folder dataset here.")
    confidence: float = option(0.5, "Pseudo-labels: pixels whose top class probability is below this "
                               "become the ignore label.", lower=0.0, upper=1.0)
    pseudo_split: str = option("train", "Split folder of the pseudo-label dataset.")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``hmsa-export``: which files, and how they are checked (docs/export.md)."""

    output_dir: Optional[str] = option(None, "Where the exported files go.")
    variants: Tuple[str, ...] = option(EXPORT_VARIANTS, "Comma-separated artefacts to write.",
                                       choices=EXPORT_VARIANTS)
    fixed_size: Optional[Tuple[int, int]] = option(
        None, "Also write fixed-input-size TFLite files of this HxW (GPU/NNAPI delegates need static "
        "shapes).", kind="hw")
    calibration_images: int = option(200, "Training crops of the run's dataset used to calibrate "
                                     "full_int8.", lower=1)
    eval_images: int = option(16, "Validation images for the agreement check (0: skip).", lower=0)
    latency_size: Optional[Tuple[int, int]] = option((512, 1024), "HxW at which latency is measured "
                                                     "('0': skip).", kind="hw")
    latency_runs: int = option(5, "Timed runs per artefact (the median is reported).", lower=1)
    threads: int = option(2, "LiteRT interpreter threads for the latency.", lower=1)


@dataclasses.dataclass(frozen=True)
class DataToolConfig:
    """``hmsa-data check|info``."""

    split: str = option("train", "Split to scan.")
    workers: int = option(4, "Decoding threads.", lower=1)


# --------------------------------------------------------------------------- resolved run
@dataclasses.dataclass(frozen=True)
class Resolved:
    """Values derived once from the configs and the machine (``config.json`` records them)."""

    num_replicas: int
    global_batch_size: int
    steps_per_epoch: int
    total_steps: int
    learning_rate: float  # the base LR scaled to the global batch


def to_json(*configs) -> str:
    """``{"ModelConfig": {...}, "DataConfig": {...}, ...}`` of the given configs (tuples as lists)."""
    return json.dumps({type(c).__name__: dataclasses.asdict(c) for c in configs}, indent=2)


def from_dict(cls, fields: dict, source: str = "config"):
    """``cls(**fields)`` with lists turned into tuples; unknown keys (a newer version's fields)
    are dropped with a warning naming ``source``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        logging.getLogger(__name__).warning("%s: ignoring unknown %s field(s) %s", source, cls.__name__, unknown)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
    return cls(**kwargs)


def read_config_file(path: str) -> dict:
    """All config sections of a ``config.json``: ``{class name: instance or dict}``.

    Sections named after a class of this module become instances; others stay dicts.
    Raises ValueError naming the file when it is not valid JSON.
    """
    with open(path) as f:
        try:
            raw = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    classes = {cls.__name__: cls for cls in RUN_CONFIGS + (Resolved,)}
    return {name: from_dict(classes[name], fields, path) if name in classes else fields
            for name, fields in raw.items()}


def read_run_config(model_dir: str):
    """``(ModelConfig | None, DataConfig | None, TrainConfig | None)`` from a training
    directory's ``config.json``; ``(None, None, None)`` if there is none."""
    path = os.path.join(model_dir, "config.json") if model_dir and os.path.isdir(model_dir) else None
    if not path or not os.path.isfile(path):
        return None, None, None
    sections = read_config_file(path)
    return tuple(sections.get(cls.__name__) for cls in RUN_CONFIGS)


def eval_chain(train_cfg: Optional[TrainConfig]) -> conventions.Chain:
    """The inference chain of a run (its ``eval_scales``), or the default one."""
    return conventions.parse_scales((train_cfg or TrainConfig()).eval_scales, "eval_scales")
