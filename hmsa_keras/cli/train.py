"""hmsa-train: train HMSA from absl flags and flagfile recipes.

    hmsa-train --flagfile=flags/quickstart.cfg [--flag=value ...]
    hmsa-train --recipe=quickstart --model_dir=runs/qs     (recipe shipped with the package)

Every flag maps onto a field of ModelConfig / DataConfig / TrainConfig
(hmsa_keras/config.py); `hmsa-train --helpfull` documents them all.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from hmsa_keras.config import ATTENTION_HEADS, FUSIONS, OUTPUT_STRIDES, TRUNKS, DataConfig, ModelConfig, TrainConfig

FLAGS = flags.FLAGS

# --- model
flags.DEFINE_enum("trunk", "mobilenetv2", TRUNKS, "Trunk (backbone).")
flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width multiplier.", lower_bound=0.01)
flags.DEFINE_enum("output_stride", "16", [str(s) for s in OUTPUT_STRIDES], "Trunk output stride (atrous).")
flags.DEFINE_string("weights", None, "Trunk weights: a local keras.applications weights file, or 'imagenet' "
                    "(downloads). Default: random initialisation.")
flags.DEFINE_float("bn_momentum", 0.9, "BatchNorm momentum (Keras convention) for trunk and heads.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_boolean("sync_bn", True, "Kept for old flagfiles, no effect: BatchNorm is synchronised exactly "
                     "when there is more than one replica (docs/training.md).")
flags.DEFINE_integer("head_channels", 256, "Channels of ASPP, decoder and attention heads.", lower_bound=1)
flags.DEFINE_integer("attention_channels", 0, "Channels of the attention head (0: --head_channels, the "
                     "reference). 64 makes HMSA training ~1.30x single-scale FLOPs instead of 1.35-1.46x.",
                     lower_bound=0)
flags.DEFINE_enum("attention_head", "conv", ATTENTION_HEADS, "Attention head: reference conv or seed deconv.")
flags.DEFINE_boolean("aux_head", False, "Auxiliary head on trunk features (loss weight --aux_weight).")
flags.DEFINE_enum("fusion", "hierarchical", FUSIONS,
                  "Training fusion: hierarchical (HMSA), explicit (softmax over scales), mean, max, single.")
flags.DEFINE_list("train_scales", ["0.5", "1.0"], "Scales used in training (hierarchical: 0.5,1.0).")
# --- data
flags.DEFINE_string("dataset", "synthetic", "synthetic, camvid, cityscapes, cityscapes_tfds, mapillary or folder.")
flags.DEFINE_string("data_dir", None, "Dataset root (not needed for synthetic).")
flags.DEFINE_string("train_split", "train", "Training split name.")
flags.DEFINE_string("val_split", "val", "Validation split name.")
flags.DEFINE_integer("eval_long_edge", 0, "Resize validation images so the long edge is at most this "
                     "(0 = full size; the reference uses 2177 for Mapillary).", lower_bound=0)
flags.DEFINE_list("crop_size", ["128", "128"], "Training crop: height,width.")
flags.DEFINE_float("scale_min", 0.5, "Random scale augmentation lower bound.", lower_bound=0.01)
flags.DEFINE_float("scale_max", 2.0, "Random scale augmentation upper bound.", lower_bound=0.01)
flags.DEFINE_boolean("hflip", True, "Random horizontal flip.")
flags.DEFINE_float("color_jitter", 0.25, "Colour jitter strength (0 = off).", lower_bound=0.0)
flags.DEFINE_float("blur_prob", 0.0, "Probability of Gaussian blur.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("noise_std", 0.0, "Gaussian noise std (pixel units).", lower_bound=0.0)
flags.DEFINE_float("class_uniform_fraction", 0.0, "Share of crops centred on class centroids.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_string("pseudo_label_dir", None, "Folder dataset of auto-labels to mix into training.")
flags.DEFINE_integer("synthetic_train_size", 256, "Images in the synthetic train split.", lower_bound=1)
flags.DEFINE_integer("synthetic_val_size", 32, "Images in the synthetic val split.", lower_bound=1)
# --- training
flags.DEFINE_string("model_dir", "runs/quickstart", "Where checkpoints, logs and models go.")
flags.DEFINE_integer("batch_size", 8, "Batch size per replica.", lower_bound=1)
flags.DEFINE_integer("epochs", 1, "Epochs.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0 = dataset size / global batch).", lower_bound=0)
flags.DEFINE_float("learning_rate", 0.01, "Base learning rate (see --reference_batch_size).", lower_bound=0.0)
flags.DEFINE_integer("reference_batch_size", 0, "Global batch the base LR was tuned for; the LR is scaled "
                     "linearly to the actual global batch (0 = no scaling).", lower_bound=0)
flags.DEFINE_float("lr_power", 1.0, "Poly LR power (reference: 2 Cityscapes, 1 Mapillary).", lower_bound=0.0)
flags.DEFINE_integer("warmup_steps", 0, "Linear LR warm-up steps.", lower_bound=0)
flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay (not on BatchNorm and biases).", lower_bound=0.0)
flags.DEFINE_enum("loss", "ce", ["ce", "rmi"], "Main loss: cross-entropy or RMI (0.5 BCE + 0.5 RMI).")
flags.DEFINE_list("class_weights", None, "Optional per-class loss weights.")
flags.DEFINE_float("aux_weight", 0.4, "Weight of the fused auxiliary loss.", lower_bound=0.0)
flags.DEFINE_float("scale_loss_weight", 0.05, "Weight of each per-scale loss.", lower_bound=0.0)
flags.DEFINE_multi_enum("freeze", [], ["trunk", "seg_head", "attention"], "Parts to freeze (repeatable).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "Precision policy.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy.")
flags.DEFINE_integer("num_cpu_replicas", 0, "Mirror over this many logical CPU devices (testing).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed (data, augmentation, initialisation).")
flags.DEFINE_integer("val_every", 1, "Validate every N epochs.", lower_bound=1)
flags.DEFINE_integer("image_every", 100, "TensorBoard images every N steps (0 = per epoch only).",
                     lower_bound=0)
flags.DEFINE_integer("checkpoint_every", 0, "Checkpoint every N steps (0 = once per epoch).", lower_bound=0)
flags.DEFINE_string("export_dir", None, "After training, export a SavedModel here (scales --export_scales).")
flags.DEFINE_list("export_scales", ["0.5", "1.0"], "Inference scale chain for --export_dir.")


def _floats(name, values, count=None, positive=True):
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name}: expected comma-separated numbers, got {','.join(values)!r}") from None
    if count is not None and len(out) != count:
        raise app.UsageError(f"--{name}: expected {count} values, got {len(out)}")
    if positive and any(v <= 0 for v in out):
        raise app.UsageError(f"--{name}: every value must be > 0, got {','.join(values)}")
    return out


def configs_from_flags():
    """Validates the flags and returns (ModelConfig, DataConfig, TrainConfig); raises
    app.UsageError with a one-line message naming the flag before any heavy work."""
    from hmsa_keras.data import DATASETS

    if FLAGS.dataset not in DATASETS:
        raise app.UsageError(f"--dataset: unknown {FLAGS.dataset!r}; allowed: {', '.join(DATASETS)}")
    if FLAGS.dataset not in ("synthetic", "cityscapes_tfds") and not FLAGS.data_dir:
        raise app.UsageError(f"--data_dir is required for --dataset={FLAGS.dataset}")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir: {FLAGS.data_dir!r} is not a directory")
    if FLAGS.weights and FLAGS.weights != "imagenet" and not os.path.isfile(FLAGS.weights):
        raise app.UsageError(f"--weights: {FLAGS.weights!r} is not a file (or use 'imagenet')")
    if FLAGS.scale_min > FLAGS.scale_max:
        raise app.UsageError(f"--scale_min ({FLAGS.scale_min}) must be <= --scale_max ({FLAGS.scale_max})")
    crop = tuple(int(v) for v in _floats("crop_size", FLAGS.crop_size, 2))
    train_scales = _floats("train_scales", FLAGS.train_scales)
    if FLAGS.fusion == "hierarchical" and 1.0 not in train_scales:
        raise app.UsageError(f"--train_scales must include 1.0 for hierarchical fusion, got {train_scales}")
    class_weights = _floats("class_weights", FLAGS.class_weights) if FLAGS.class_weights else None
    width = FLAGS.head_channels
    model_cfg = ModelConfig(
        trunk=FLAGS.trunk, alpha=FLAGS.alpha, output_stride=int(FLAGS.output_stride), weights=FLAGS.weights,
        bn_momentum=FLAGS.bn_momentum, sync_bn=FLAGS.sync_bn, aspp_channels=width, decoder_channels=width,
        attention_channels=FLAGS.attention_channels or width, attention_head=FLAGS.attention_head, aux_head=FLAGS.aux_head,
        fusion=FLAGS.fusion, train_scales=train_scales)
    data_cfg = DataConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, train_split=FLAGS.train_split,
        val_split=FLAGS.val_split, eval_long_edge=FLAGS.eval_long_edge or None, crop_size=crop, scale_min=FLAGS.scale_min,
        scale_max=FLAGS.scale_max, hflip=FLAGS.hflip, color_jitter=FLAGS.color_jitter,
        blur_prob=FLAGS.blur_prob, noise_std=FLAGS.noise_std,
        class_uniform_fraction=FLAGS.class_uniform_fraction, pseudo_label_dir=FLAGS.pseudo_label_dir,
        synthetic_train_size=FLAGS.synthetic_train_size, synthetic_val_size=FLAGS.synthetic_val_size,
        seed=FLAGS.seed)
    train_cfg = TrainConfig(
        model_dir=FLAGS.model_dir, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch or None, learning_rate=FLAGS.learning_rate,
        reference_batch_size=FLAGS.reference_batch_size or None, lr_power=FLAGS.lr_power,
        warmup_steps=FLAGS.warmup_steps, momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay,
        loss=FLAGS.loss, class_weights=class_weights, aux_weight=FLAGS.aux_weight,
        scale_loss_weight=FLAGS.scale_loss_weight, freeze=tuple(FLAGS.freeze), precision=FLAGS.precision,
        strategy=FLAGS.strategy, num_cpu_replicas=FLAGS.num_cpu_replicas, seed=FLAGS.seed,
        val_every=FLAGS.val_every, image_every=FLAGS.image_every, checkpoint_every=FLAGS.checkpoint_every)
    return model_cfg, data_cfg, train_cfg


def write_flagfile(model_dir):
    """Records every flag of this module (with its value) as a reusable flagfile."""
    os.makedirs(model_dir, exist_ok=True)
    module_flags = FLAGS.get_flags_for_module(sys.modules[__name__])
    with open(os.path.join(model_dir, "flags.txt"), "w") as f:
        f.write("".join(flag.serialize() + "\n" for flag in module_flags if flag.serialize()))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        model_cfg, data_cfg, train_cfg = configs_from_flags()
    except app.UsageError as e:  # one line naming the flag, not absl's full usage text
        print(f"hmsa-train: error: {e} (see --helpfull)", file=sys.stderr)
        return 1
    from hmsa_keras.training.distribute import is_chief, make_strategy

    try:
        strategy = make_strategy(train_cfg.strategy, train_cfg.num_cpu_replicas)  # before any TF op
    except (ValueError, RuntimeError) as e:  # e.g. --strategy=multi_worker without TF_CONFIG
        print(f"hmsa-train: error: --strategy: {e}", file=sys.stderr)
        return 1
    from hmsa_keras.data import DataError
    from hmsa_keras.training.trainer import TrainingDiverged, train

    if is_chief(strategy):
        write_flagfile(train_cfg.model_dir)
    try:
        result = train(model_cfg, data_cfg, train_cfg, strategy)
    except TrainingDiverged as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 3
    except DataError as e:  # missing/unreadable files: the message names them
        print(f"hmsa-train: data error: {e}", file=sys.stderr)
        return 2
    print(f"Done: best val mIoU {result['best_val_miou']:.4f}; models in {train_cfg.model_dir}")
    if FLAGS.export_dir and is_chief(strategy):
        from hmsa_keras.export import export_saved_model
        from hmsa_keras.api import load_model

        path = export_saved_model(load_model(train_cfg.model_dir), FLAGS.export_dir,
                                  scales=_floats("export_scales", FLAGS.export_scales))
        print(f"Exported SavedModel to {path}")
    return 0


def resolve_recipe(argv):
    """Turns ``--recipe=NAME`` into ``--flagfile=<packaged recipes>/NAME.cfg``."""
    from hmsa_keras.cli.recipes import recipe_path

    out = []
    for arg in argv:
        if arg.startswith("--recipe="):
            arg = "--flagfile=" + recipe_path(arg.split("=", 1)[1])
        out.append(arg)
    return out


def run():
    app.run(main, argv=resolve_recipe(sys.argv))


if __name__ == "__main__":
    run()
