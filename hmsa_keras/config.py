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

TRUNKS = ("mobilenetv2", "resnet50", "resnet101", "hrnetv2_w48")
HEADS = ("deeplabv3plus", "ocr")
OUTPUT_STRIDES = (8, 16)
FUSIONS = ("hierarchical", "explicit", "mean", "max", "single")
ATTENTION_HEADS = ("conv", "deconv")
ATTENTION_BN = ("all_scales", "fused_scales")
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


def option(
    default,
    help,
    *,
    choices=None,
    lower=None,
    upper=None,
    kind=None,
    aliases=(),
    zero_is_none=False,
):
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
    metadata = dict(
        help=help,
        choices=tuple(choices) if choices else None,
        lower=lower,
        upper=upper,
        kind=kind,
        aliases=tuple(aliases),
        zero_is_none=zero_is_none,
    )
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- run configuration
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an :class:`hmsa_keras.HMSA` model (its constructor arguments)."""

    num_classes: Optional[int] = option(
        None,
        "Classes the model predicts. Default: the dataset's; if given it must match the dataset.",
        lower=1,
    )
    trunk: str = option("mobilenetv2", "Trunk (backbone).", choices=TRUNKS)
    alpha: float = option(1.0, "MobileNetV2 width multiplier.", lower=0.01)
    output_stride: int = option(
        16, "Trunk output stride (atrous convolution in the last stage(s)).", choices=OUTPUT_STRIDES
    )
    weights: Optional[str] = option(
        None,
        "Trunk weights: a local keras.applications weights file, or 'imagenet' (downloads). "
        "Default: random initialisation.",
    )
    bn_momentum: float = option(
        0.9,
        "BatchNorm momentum, Keras convention (PyTorch's 0.1 is 0.9 here).",
        lower=0.0,
        upper=1.0,
    )
    sync_bn: Optional[bool] = option(
        None,
        "Synchronized BatchNorm across replicas. Default: on exactly when training runs on more "
        "than one replica (then required: unsynchronized moving statistics diverge).",
    )
    aspp_channels: int = option(
        256, "Channels of every ASPP branch and of its projection.", lower=1
    )
    decoder_channels: int = option(
        256, "Channels of the DeepLabV3+ segmentation head convolutions.", lower=1
    )
    low_level_channels: int = option(
        48, "Channels the stride-4 trunk features are projected to.", lower=1
    )
    attention_head: str = option(
        "conv",
        "Attention head: 'conv' (the reference's) or 'deconv' "
        "(transposed convolutions, an alternative head).",
        choices=ATTENTION_HEADS,
    )
    attention_channels: int = option(
        256,
        "Channels of the attention head (the reference: 256; 64 "
        "makes HMSA training ~1.30x single-scale FLOPs).",
        lower=1,
    )
    aux_head: bool = option(
        False, "Auxiliary head on the trunk features (loss weight --aux_weight)."
    )
    dropout: float = option(0.0, "Dropout rate after the ASPP projection.", lower=0.0, upper=0.99)
    fusion: str = option(
        "hierarchical",
        "Training fusion: hierarchical (HMSA), explicit (softmax over "
        "scales), mean, max, single (one scale).",
        choices=FUSIONS,
    )
    train_scales: Tuple[float, ...] = option(
        (0.5, 1.0), "Scales run in training (HMSA: 0.5,1.0).", kind="scales"
    )
    attention_bn: str = option(
        "all_scales",
        "Where the attention head runs in training: all_scales (the reference's "
        "two_scale_forward: its BatchNorm statistics see every training scale; the unread "
        "attention takes no gradient) or fused_scales (only where the fusion reads it: cheaper, "
        "statistics of those scales only).",
        choices=ATTENTION_BN,
    )
    head: Optional[str] = option(
        None,
        "Segmentation head: deeplabv3plus (ASPP + decoder) or ocr (object-contextual "
        "representations). Default: the trunk's own: ocr for hrnetv2_w48, deeplabv3plus otherwise.",
        choices=HEADS,
    )
    hrnet_width: int = option(
        48,
        "HRNetV2 width: channels of the highest-resolution branch (48 = W48, "
        "the reference's; smaller for tests).",
        lower=1,
    )
    ocr_mid_channels: int = option(
        512, "OCR head: channels of the pixel features (reference MODEL.OCR.MID_CHANNELS).", lower=1
    )
    ocr_key_channels: int = option(
        256,
        "OCR head: channels of the object-attention keys (reference MODEL.OCR.KEY_CHANNELS).",
        lower=1,
    )
    ocr_dropout: float = option(
        0.05, "OCR head: dropout before the classifier.", lower=0.0, upper=0.99
    )

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset choice, augmentation and sampling of the tf.data pipeline (docs/data.md)."""

    dataset: str = option(
        "synthetic", "Dataset (docs/data.md); synthetic needs no files.", choices=DATASETS
    )
    data_dir: Optional[str] = option(None, "Dataset root folder (not needed for synthetic).")
    train_split: str = option("train", "Training split name.")
    val_split: str = option("val", "Validation split name.")
    crop_size: Tuple[int, int] = option((128, 128), "Training crop HxW (or H,W).", kind="hw")
    pre_size: Optional[int] = option(
        None,
        "Training: bring the image's long edge to this before the random scale and crop (the "
        "reference's Mapillary recipe: 2177; 0 or unset: off).",
        lower=0,
        zero_is_none=True,
    )
    scale_min: float = option(0.5, "Random scale augmentation: lower bound.", lower=0.01)
    scale_max: float = option(2.0, "Random scale augmentation: upper bound.", lower=0.01)
    hflip: bool = option(True, "Random horizontal flip.")
    color_jitter: float = option(
        0.25,
        "Colour jitter strength (brightness/contrast/saturation; hue = jitter / 2.5; 0 = off).",
        lower=0.0,
    )
    blur_prob: float = option(0.0, "Probability of Gaussian blur.", lower=0.0, upper=1.0)
    noise_std: float = option(0.0, "Additive Gaussian noise std, pixel units (0..255).", lower=0.0)
    class_uniform_fraction: float = option(
        0.0,
        "Share of training crops centred on class centroids (class-uniform sampling).",
        lower=0.0,
        upper=1.0,
    )
    class_uniform_tile: int = option(
        256,
        "Label tile size (pixels) of the class centroids (the reference: 1024 on Cityscapes).",
        lower=1,
    )
    eval_long_edge: Optional[int] = option(
        None,
        "Resize evaluation images so the long edge is at most this (0 or unset: full size; the "
        "reference uses 2177 for Mapillary).",
        lower=0,
        zero_is_none=True,
    )
    eval_upscale: bool = option(
        False,
        "Also enlarge evaluation images whose long edge is below "
        "--eval_long_edge, so every image is evaluated at exactly that long edge "
        "(the reference's Mapillary evaluation).",
    )
    pseudo_label_dir: Optional[str] = option(
        None, "Folder dataset of auto-labels (hmsa-autolabel) mixed into training."
    )
    synthetic_train_size: int = option(256, "Images in the synthetic train split.", lower=1)
    synthetic_val_size: int = option(32, "Images in the synthetic val split.", lower=1)
    synthetic_image_size: Tuple[int, int] = option(
        (128, 128), "Size HxW of the synthetic images.", kind="hw"
    )
    seed: int = option(
        0,
        "Random seed: data order, sampling, augmentation, synthetic scenes and weight "
        "initialisation.",
    )
    cache_dir: Optional[str] = option(
        None, "Cache of class-uniform centroids (default ~/.cache/hmsa_keras)."
    )
    validate: str = option(
        "headers",
        "Build-time check of the files: paths | headers (+ sizes, "
        "readable) | full (decode everything).",
        choices=VALIDATE_LEVELS,
    )
    tfds_manual_dir: Optional[str] = option(
        None, "cityscapes_tfds: folder holding the official zips (default: data_dir)."
    )
    mapillary_version: str = option(
        "1.2",
        "Mapillary Vistas version: 1.2 (65 classes) or 2.0 (123 classes); reads "
        "config_v<version>.json and <split>/v<version>/labels when present (docs/data.md).",
        choices=("1.2", "2.0"),
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, precision, distribution, and the run's evaluation chain."""

    model_dir: str = option(
        "runs/quickstart", "Where checkpoints, logs, models and config.json go."
    )
    batch_size: int = option(8, "Batch size per replica.", lower=1)
    epochs: int = option(1, "Training epochs (passes of steps_per_epoch steps).", lower=1)
    steps_per_epoch: Optional[int] = option(
        None,
        "Steps per epoch (0 or unset: training images / global batch).",
        lower=0,
        zero_is_none=True,
    )
    learning_rate: float = option(
        0.01, "Base learning rate (at --reference_batch_size).", lower=0.0
    )
    reference_batch_size: Optional[int] = option(
        None,
        "Global batch the base LR was tuned for; the LR scales linearly to the actual global "
        "batch (0 or unset: no scaling).",
        lower=0,
        zero_is_none=True,
    )
    lr_power: float = option(
        1.0, "Poly LR power (the reference: 2 Cityscapes, 1 Mapillary).", lower=0.0
    )
    warmup_steps: int = option(0, "Linear LR warm-up steps.", lower=0)
    momentum: float = option(0.9, "SGD momentum.", lower=0.0, upper=1.0)
    weight_decay: float = option(
        1e-4, "Weight decay coefficient; what it means depends on --weight_decay_mode.", lower=0.0
    )
    weight_decay_mode: str = option(
        "decoupled",
        "coupled: L2 added to the gradient before momentum, on every parameter "
        "(torch.optim.SGD, the reference; about 1/(1 - momentum) times stronger "
        "at the same coefficient); "
        "decoupled: Keras' w -= lr * wd * w, not on BatchNorm and biases.",
        choices=WEIGHT_DECAY_MODES,
    )
    lr_schedule_granularity: str = option(
        "iteration",
        "Poly LR updated every step (iteration), or constant within each epoch like the "
        "reference's LambdaLR (epoch).",
        choices=SCHEDULE_GRANULARITIES,
    )
    loss: str = option(
        "ce", "Main loss: cross-entropy, or RMI (0.5 BCE + 0.5 RMI).", choices=LOSSES
    )
    class_weights: Optional[Tuple[float, ...]] = option(
        None, "Per-class loss weights (one per class).", kind="floats", lower=0.0
    )
    aux_weight: float = option(0.4, "Weight of the fused auxiliary loss.", lower=0.0)
    scale_loss_weight: float = option(0.05, "Weight of each per-scale loss.", lower=0.0)
    freeze: Tuple[str, ...] = option(
        (),
        "Parts to freeze (repeat the flag): trunk, seg_head, attention.",
        choices=FREEZE_GROUPS,
        kind="multi",
    )
    precision: str = option("float32", "Precision policy.", choices=PRECISIONS)
    strategy: str = option(
        "default",
        "tf.distribute strategy: default (one device), mirrored (all local "
        "GPUs, or --num_cpu_replicas logical CPUs), multi_worker (TF_CONFIG).",
        choices=STRATEGIES,
    )
    num_cpu_replicas: int = option(
        0, "With --strategy=mirrored on a CPU: this many logical CPU replicas (testing).", lower=0
    )
    val_every: int = option(1, "Validate every N epochs.", lower=1)
    image_every: int = option(
        100, "TensorBoard images every N steps (0: once per epoch only).", lower=0
    )
    checkpoint_every: int = option(0, "Checkpoint every N steps (0: once per epoch).", lower=0)
    eval_scales: Tuple[float, ...] = option(
        (0.5, 1.0),
        "Inference scale chain of this run: used by validation images, hmsa-eval, "
        "hmsa-predict and hmsa-export unless they are given another.",
        kind="scales",
        aliases=("export_scales",),
    )
    eval_flip: bool = option(
        False,
        "Flip-TTA in the run's inference chain (hmsa-eval, hmsa-predict, hmsa-export defaults).",
    )
    export_dir: Optional[str] = option(
        None,
        "After training, export a SavedModel of the best model here "
        "(chain --eval_scales); a relative path is inside --model_dir.",
    )
    init_from: Optional[str] = option(
        None,
        "Warm start: initial weights from a run directory (its best model), a .keras file, a "
        ".weights.h5 file or a converted checkpoint directory, matched by layer name and shape. "
        "Weights only (fresh optimizer, step 0); not applied again when the run resumes from its "
        "own checkpoint.",
    )
    early_stopping_patience: int = option(
        0,
        "Stop when the validation mIoU has not improved for this many validations (0: off).",
        lower=0,
    )
    summary_images: int = option(
        4,
        "TensorBoard, val run: this many fixed validation images, chosen to cover the classes "
        "(prediction, ground truth, attention), at every validation (0: none).",
        lower=0,
    )
    worst_images: int = option(
        3,
        "TensorBoard, val run: the validation images with the lowest IoU at every validation "
        "(0: none).",
        lower=0,
    )


# Shorthand flags kept for old flagfiles: one value sets several fields unless those are given.
SHORTHANDS = {
    "head_channels": (
        ModelConfig,
        ("aspp_channels", "decoder_channels", "attention_channels"),
        "Sets --aspp_channels, --decoder_channels and --attention_channels at once "
        "(each of those given explicitly wins).",
    ),
}

RUN_CONFIGS = (ModelConfig, DataConfig, TrainConfig)


# --------------------------------------------------------------------------- tool options
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``hmsa-eval``: what to evaluate, how, and where the metrics go (docs/evaluation.md)."""

    split: Optional[str] = option(None, "Split to evaluate (default: --val_split).")
    sweep: Optional[str] = option(
        None,
        "Several chains separated by ';' (e.g. \"1.0;0.5,1.0;0.5,1.0,2.0\")"
        ", evaluated in one pass and printed side by side. Replaces --scales.",
    )
    saved_model: Optional[str] = option(
        None,
        "Evaluate this exported SavedModel instead of a Keras model "
        "(its scale chain was fixed at export).",
    )
    output_dir: Optional[str] = option(
        None, "Where metrics go (default: <model_dir>/eval/<split>)."
    )
    cityscapes_submission_dir: Optional[str] = option(
        None, "Also write official Cityscapes result PNGs (labelIds, ground-truth size) here."
    )
    eval_batch_size: int = option(
        1, "Images per replica step (> 1 only if all images of the split share a size).", lower=1
    )
    max_images: int = option(0, "Stop after this many images (0: the whole split).", lower=0)
    tile_size: Optional[Tuple[int, int]] = option(
        None,
        "Tiled inference for images too large for memory: tile HxW (or one number).",
        kind="hw",
    )
    tile_overlap: int = option(128, "Pixels shared by neighbouring tiles.", lower=0)
    tile_blend: str = option("gaussian", "How overlapping tiles are blended.", choices=TILE_BLENDS)
    tflite: Optional[str] = option(
        None,
        "Evaluate this .tflite file instead of a Keras model (its chain and "
        "classes come from the file's metadata).",
    )


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """``hmsa-predict`` / ``hmsa-autolabel``: inputs, outputs and pseudo-labels
    (docs/evaluation.md)."""

    input: Optional[str] = option(
        None, "An image file, a folder of images (not recursive) or a glob."
    )
    output_dir: Optional[str] = option(
        None, "Where the per-image outputs go (required unless only --pseudo_label_dir is wanted)."
    )
    visualize: bool = option(True, "Write <stem>_color.png and <stem>_overlay.png.")
    overlay_alpha: float = option(
        0.5, "Opacity of the colours in the overlay.", lower=0.0, upper=1.0
    )
    save_raw: bool = option(False, "Write <stem>_label.png: class ids as a single-channel PNG.")
    save_probs: bool = option(
        False, "Write <stem>_probs.npy: float16 class probabilities [H, W, K]."
    )
    save_attention: bool = option(
        False, "Write <stem>_attention_<scale>.png per scale of the chain."
    )
    tile_size: Optional[Tuple[int, int]] = option(
        None,
        "Tiled inference for large images: tile HxW (or one number); each tile runs the whole "
        "chain.",
        kind="hw",
    )
    tile_overlap: int = option(128, "Pixels shared by neighbouring tiles.", lower=0)
    tile_blend: str = option("gaussian", "How overlapping tiles are blended.", choices=TILE_BLENDS)
    eval_upscale: bool = option(
        False,
        "Also enlarge evaluation images whose long edge is below "
        "--eval_long_edge, so every image is evaluated at exactly that long edge "
        "(the reference's Mapillary evaluation).",
    )
    pseudo_label_dir: Optional[str] = option(
        None, "Also write pseudo-labels as a folder dataset here."
    )
    confidence: float = option(
        0.5,
        "Pseudo-labels: pixels whose top class probability is below this become the ignore label.",
        lower=0.0,
        upper=1.0,
    )
    pseudo_split: str = option("train", "Split folder of the pseudo-label dataset.")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``hmsa-export``: which files, and how they are checked (docs/export.md)."""

    output_dir: Optional[str] = option(None, "Where the exported files go.")
    variants: Tuple[str, ...] = option(
        EXPORT_VARIANTS, "Comma-separated artefacts to write.", choices=EXPORT_VARIANTS
    )
    fixed_size: Optional[Tuple[int, int]] = option(
        None,
        "Also write fixed-input-size TFLite files of this HxW (GPU/NNAPI delegates need static "
        "shapes).",
        kind="hw",
    )
    calibration_images: int = option(
        32, "Training images of the run's dataset used to calibrate full_int8.", lower=1
    )
    eval_images: int = option(16, "Validation images for the agreement check (0: skip).", lower=0)
    latency_size: Optional[Tuple[int, int]] = option(
        (512, 1024), "HxW at which latency is measured ('0': skip).", kind="hw"
    )
    latency_runs: int = option(5, "Timed runs per artefact (the median is reported).", lower=1)
    threads: int = option(2, "LiteRT interpreter threads for the latency.", lower=1)
    serving_name: str = option(
        "hmsa",
        "TF Serving model name: the SavedModel goes to "
        "<output_dir>/<serving_name>/<serving_version>/.",
    )
    serving_version: int = option(
        1,
        "TF Serving version folder of the SavedModel (raise it to roll out a "
        "new model under a running server).",
        lower=1,
    )
    warmup_size: Optional[Tuple[int, int]] = option(
        None,
        "HxW of the image in the SavedModel's warm-up requests "
        "(assets.extra/tf_serving_warmup_requests; default: --latency_size).",
        kind="hw",
    )
    tflite_outputs: str = option(
        "classes_probabilities",
        "Outputs of the TFLite files: classes and probabilities [1,H,W,K], or classes only.",
        choices=("classes_probabilities", "classes"),
    )
    calibration_size: Optional[Tuple[int, int]] = option(
        None,
        "HxW at which full_int8 is calibrated: full training images resized to it (default: "
        "--latency_size, the deployment size).",
        kind="hw",
    )
    calibration_crops: bool = option(
        False,
        "Calibrate full_int8 on augmented training crops at the crop "
        "size instead of full images at --calibration_size.",
    )
    float_ops: Optional[str] = option(
        None,
        "Comma-separated TFLite op types kept in float in full_int8 "
        "(selective quantization), e.g. MUL,LOGISTIC; 'auto': chosen by a per-op "
        "sweep (see --int8_target).",
    )
    int8_sweep: bool = option(
        False,
        "Also convert full_int8 once per op type with that type kept in float "
        "and report agreement and latency of each (int8_sweep.json).",
    )
    int8_target: float = option(
        0.97,
        "Agreement full_int8 should reach at the deployment size; with "
        "--float_ops=auto the op type whose float fallback helps most is kept in float "
        "when the all-int8 file misses it.",
        lower=0.0,
        upper=1.0,
    )


@dataclasses.dataclass(frozen=True)
class DataToolConfig:
    """``hmsa-data check|info``."""

    split: str = option("train", "Split to scan.")
    workers: int = option(4, "Decoding threads.", lower=1)


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """``hmsa-convert``: a reference checkpoint in, a model directory out (docs/hrnet_ocr.md)."""

    checkpoint: Optional[str] = option(
        None,
        "Reference checkpoint: .pth (needs PyTorch, pip install "
        '"hmsa_keras[convert]") or a .npz state_dict.',
    )
    output_dir: Optional[str] = option(None, "Where best.keras, config.json and conversion.txt go.")
    dataset: Optional[str] = option(
        None,
        "Dataset the checkpoint was trained on: class count (19 / 65), "
        "class names and evaluation chain.",
        choices=("cityscapes", "mapillary"),
    )
    num_classes: Optional[int] = option(
        None,
        "Override the dataset's class count (must match the checkpoint's classifier).",
        lower=1,
    )
    allow_pickle: bool = option(
        False, "Read .pth files holding arbitrary Python objects (only for files you trust)."
    )
    overwrite: bool = option(False, "Replace an existing best.keras in --output_dir.")
    list_tensors: bool = option(
        False, "Also print every mapped tensor (always written to conversion.txt)."
    )


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
    """``{"ModelConfig": {...}, "DataConfig": {...}, ...}`` of the given configs (tuples as
    lists)."""
    return json.dumps({type(c).__name__: dataclasses.asdict(c) for c in configs}, indent=2)


def from_dict(cls, fields: dict, source: str = "config"):
    """``cls(**fields)`` with lists turned into tuples; unknown keys (a newer version's fields)
    are dropped with a warning naming ``source``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        logging.getLogger(__name__).warning(
            "%s: ignoring unknown %s field(s) %s", source, cls.__name__, unknown
        )
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
    return {
        name: from_dict(classes[name], fields, path) if name in classes else fields
        for name, fields in raw.items()
    }


def read_run_config(model_dir: str):
    """``(ModelConfig | None, DataConfig | None, TrainConfig | None)`` from a training
    directory's ``config.json``; ``(None, None, None)`` if there is none."""
    path = (
        os.path.join(model_dir, "config.json") if model_dir and os.path.isdir(model_dir) else None
    )
    if not path or not os.path.isfile(path):
        return None, None, None
    sections = read_config_file(path)
    return tuple(sections.get(cls.__name__) for cls in RUN_CONFIGS)


def eval_chain(train_cfg: Optional[TrainConfig]) -> conventions.Chain:
    """The inference chain of a run (its ``eval_scales``), or the default one."""
    return conventions.parse_scales((train_cfg or TrainConfig()).eval_scales, "eval_scales")
