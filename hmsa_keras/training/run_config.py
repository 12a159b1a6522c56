"""Resolving a run's configuration once: the only place where derived values are set.

:func:`resolve` takes the configs as the user gave them and the number of replicas and
returns a :class:`RunConfig` whose configs are complete and frozen:

- ``ModelConfig.num_classes``: the dataset's (a given value must agree);
- ``ModelConfig.sync_bn``: on exactly when there is more than one replica, unless given;
- :class:`~hmsa_keras.config.Resolved`: global batch, steps per epoch (training images /
  global batch unless given), total steps, and the learning rate scaled linearly from
  ``reference_batch_size`` to the global batch.

The trainer writes the result to ``model_dir/config.json`` and never changes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from hmsa_keras.config import (
    DataConfig,
    ModelConfig,
    Resolved,
    TrainConfig,
    read_config_file,
    to_json,
)

log = logging.getLogger("hmsa_keras")


class ConfigError(ValueError):
    """A configuration that contradicts the data or the machine; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The complete, frozen configuration of a training run."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    resolved: Resolved

    def to_json(self) -> str:
        return to_json(self.model, self.data, self.train, self.resolved)

    def write(self, model_dir: str) -> str:
        """Writes ``model_dir/config.json`` atomically; returns its path."""
        path = os.path.join(model_dir, "config.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, model_dir: str) -> "RunConfig":
        """The RunConfig a run wrote to ``model_dir/config.json`` (FileNotFoundError,
        ValueError)."""
        sections = read_config_file(os.path.join(model_dir, "config.json"))
        missing = [
            c for c in ("ModelConfig", "DataConfig", "TrainConfig", "Resolved") if c not in sections
        ]
        if missing:
            raise ValueError(
                f"{model_dir}/config.json lacks {missing}: not written by this version"
            )
        return cls(
            sections["ModelConfig"],
            sections["DataConfig"],
            sections["TrainConfig"],
            sections["Resolved"],
        )


def num_examples(data_cfg: DataConfig, split: str) -> int:
    """Size of a split (synthetic: its configured size; file datasets: their pairs)."""
    from hmsa_keras.data import iter_pairs
    from hmsa_keras.data.synthetic import split_size

    if data_cfg.dataset == "synthetic":
        return split_size(data_cfg, split)
    if data_cfg.dataset == "cityscapes_tfds":
        return {"train": 2975, "val": 500}.get(split, 1525)
    return len(iter_pairs(data_cfg, split))


def resolve(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    num_replicas: int,
    num_classes: int,
    train_examples: int,
) -> RunConfig:
    """The run's complete configuration.

    Args:
      model_cfg, data_cfg, train_cfg: as given by the user (flags or Python).
      num_replicas: replicas of the distribution strategy (>= 1).
      num_classes: classes of the dataset (``get_dataset_info(data_cfg).num_classes``).
      train_examples: images in the training split (:func:`num_examples`).
    Raises:
      ConfigError: ``num_classes`` given and different from the dataset's; a training
        scale chain that the fusion cannot use; ``scale_min > scale_max``.
    """
    if model_cfg.num_classes is not None and model_cfg.num_classes != num_classes:
        raise ConfigError(
            f"--num_classes={model_cfg.num_classes} but dataset {data_cfg.dataset!r} has "
            f"{num_classes} classes (leave --num_classes unset to take the dataset's)"
        )
    if model_cfg.fusion == "hierarchical" and 1.0 not in model_cfg.train_scales:
        raise ConfigError(
            f"--train_scales must include 1.0 for hierarchical fusion, got "
            f"{','.join(f'{s:g}' for s in model_cfg.train_scales)}"
        )
    if data_cfg.scale_min > data_cfg.scale_max:
        raise ConfigError(
            f"--scale_min ({data_cfg.scale_min:g}) must be <= --scale_max ({data_cfg.scale_max:g})"
        )
    if train_cfg.class_weights is not None and len(train_cfg.class_weights) != num_classes:
        raise ConfigError(
            f"--class_weights lists {len(train_cfg.class_weights)} weights; the dataset has "
            f"{num_classes} classes"
        )
    sync_bn = model_cfg.sync_bn
    if sync_bn is None:
        # On one replica Keras' synchronized path only costs precision (E[x^2] - E[x]^2 variance).
        sync_bn = num_replicas > 1
    elif not sync_bn and num_replicas > 1:
        log.warning(
            "--nosync_bn on %d replicas: the BatchNorm moving statistics of the replicas will "
            "diverge (replica 0's are saved)",
            num_replicas,
        )
    model = dataclasses.replace(model_cfg, num_classes=num_classes, sync_bn=sync_bn)
    batch = train_cfg.batch_size * num_replicas
    steps = train_cfg.steps_per_epoch or max(train_examples // batch, 1)
    scale = batch / train_cfg.reference_batch_size if train_cfg.reference_batch_size else 1.0
    resolved = Resolved(
        num_replicas=num_replicas,
        global_batch_size=batch,
        steps_per_epoch=steps,
        total_steps=steps * train_cfg.epochs,
        learning_rate=train_cfg.learning_rate * scale,
    )
    return RunConfig(model, data_cfg, train_cfg, resolved)


def check_resume(run: RunConfig, model_dir: str) -> None:
    """Warns when a run resumed in ``model_dir`` was configured differently before."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            before = json.load(f)
    except ValueError:
        return
    now = json.loads(run.to_json())
    changed = sorted(
        f"{section}.{key}"
        for section, fields in now.items()
        if isinstance(fields, dict)
        for key, value in fields.items()
        if isinstance(before.get(section), dict)
        and key in before[section]
        and before[section][key] != value
    )
    if changed:
        log.warning("resuming %s with a different configuration: %s", model_dir, ", ".join(changed))
