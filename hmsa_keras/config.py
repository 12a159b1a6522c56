"""Plain configuration dataclasses: the only thing that flows from flags to code.

The command-line tools build these from absl flags; the library takes them (or
their fields as keyword arguments) and never reads flags itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Tuple

TRUNKS = ("mobilenetv2", "resnet50", "resnet101", "hrnetv2_w48")
HEADS = ("deeplabv3plus", "ocr")  # None: the trunk's own (ocr for HRNet, else deeplabv3plus)
OUTPUT_STRIDES = (8, 16)
FUSIONS = ("hierarchical", "explicit", "mean", "max", "single")
ATTENTION_HEADS = ("conv", "deconv")


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to build an :class:`hmsa_keras.HMSA` model."""

    num_classes: int = 19
    trunk: str = "mobilenetv2"
    alpha: float = 1.0  # MobileNetV2 width multiplier
    output_stride: int = 16
    weights: Optional[str] = None  # None, a local weights file, or "imagenet"
    bn_momentum: float = 0.9  # Keras convention (PyTorch 0.1)
    sync_bn: bool = False
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_channels: int = 48
    attention_head: str = "conv"  # "conv" (reference) or "deconv" (seed report)
    attention_channels: int = 256
    aux_head: bool = False
    fusion: str = "hierarchical"
    train_scales: Tuple[float, ...] = (0.5, 1.0)
    dropout: float = 0.0
    # HRNetV2 + OCR (issue 15)
    hrnet_width: int = 48  # channels of HRNetV2's highest-resolution branch (W48 = 48)
    head: Optional[str] = None  # deeplabv3plus | ocr; None: ocr for HRNet, deeplabv3plus otherwise
    ocr_mid_channels: int = 512
    ocr_key_channels: int = 256
    ocr_dropout: float = 0.05

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DataConfig:
    """Dataset choice, augmentation and sampling for the tf.data pipeline."""

    dataset: str = "synthetic"  # synthetic, camvid, cityscapes, cityscapes_tfds, mapillary, folder
    data_dir: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: Tuple[int, int] = (128, 128)  # (height, width)
    scale_min: float = 0.5
    scale_max: float = 2.0
    hflip: bool = True
    color_jitter: float = 0.25  # brightness/contrast/saturation strength; hue = jitter / 2.5
    blur_prob: float = 0.0
    noise_std: float = 0.0  # Gaussian noise std in [0, 255] pixel units
    class_uniform_fraction: float = 0.0  # share of crops centred on class centroids
    eval_long_edge: Optional[int] = None  # resize eval images so long edge <= this
    pseudo_label_dir: Optional[str] = None  # folder dataset of auto-labels mixed into training
    synthetic_train_size: int = 256
    synthetic_val_size: int = 32
    synthetic_image_size: Tuple[int, int] = (128, 128)
    seed: int = 0
    class_uniform_tile: int = 256  # label tile size for class centroids (reference: 1024 on Cityscapes)
    cache_dir: Optional[str] = None  # class-uniform centroid cache (default ~/.cache/hmsa_keras)
    validate: str = "headers"  # build-time check: paths | headers (+ sizes, readable) | full (decode all)
    tfds_manual_dir: Optional[str] = None  # cityscapes_tfds: folder holding the official zips (default data_dir)


@dataclasses.dataclass
class TrainConfig:
    """Optimisation, schedule, precision and distribution."""

    model_dir: str = "runs/quickstart"
    batch_size: int = 8  # per replica
    epochs: int = 1
    steps_per_epoch: Optional[int] = None
    learning_rate: float = 0.01  # base LR at the recipe's reference batch
    reference_batch_size: Optional[int] = None  # LR scales linearly from this global batch
    lr_power: float = 1.0
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    loss: str = "ce"  # ce | rmi
    class_weights: Optional[Tuple[float, ...]] = None
    aux_weight: float = 0.4
    scale_loss_weight: float = 0.05
    freeze: Tuple[str, ...] = ()  # any of trunk, seg_head, attention
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    strategy: str = "default"  # default | mirrored | multi_worker
    num_cpu_replicas: int = 0  # >0: mirrored over this many logical CPUs
    seed: int = 0
    val_every: int = 1  # epochs
    image_every: int = 100  # steps between TensorBoard image summaries
    checkpoint_every: int = 0  # steps; 0 = once per epoch
    eval_scales: Tuple[float, ...] = (0.5, 1.0)


def to_json(*configs) -> str:
    return json.dumps({type(c).__name__: dataclasses.asdict(c) for c in configs}, indent=2)


def read_run_config(model_dir: str):
    """``(ModelConfig | None, DataConfig | None, TrainConfig | None)`` from a training
    directory's ``config.json``; ``(None, None, None)`` if there is none. Unknown keys
    (a newer version's fields) are dropped with a warning; lists become tuples."""
    path = os.path.join(model_dir, "config.json") if model_dir and os.path.isdir(model_dir) else None
    if not path or not os.path.isfile(path):
        return None, None, None
    with open(path) as f:
        try:
            raw = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    out = []
    for cls in (ModelConfig, DataConfig, TrainConfig):
        fields = raw.get(cls.__name__)
        if fields is None:
            out.append(None)
            continue
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            logging.getLogger(__name__).warning("%s: ignoring unknown %s field(s) %s", path, cls.__name__, unknown)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
        out.append(cls(**kwargs))
    return tuple(out)
