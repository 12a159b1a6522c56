"""SGD with momentum, weight decay off BatchNorm and biases, poly LR with linear warm-up."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="hmsa_keras")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr(t) = base * (t + 1) / warmup`` for ``t < warmup`` (never 0, reaches ``base``), then ``base * (1 - t'/T')^power``
    where ``t' = t - warmup`` and ``T' = total_steps - warmup`` (reference poly schedule)."""

    def __init__(self, base_lr, total_steps, power=1.0, warmup_steps=0, end_lr=0.0):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.end_lr = float(end_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 0))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        poly = (self.base_lr - self.end_lr) * (1.0 - progress) ** self.power + self.end_lr
        if self.warmup_steps > 0:
            return tf.where(step < warmup, self.base_lr * (step + 1.0) / warmup, poly)
        return poly

    def get_config(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, power=self.power,
                    warmup_steps=self.warmup_steps, end_lr=self.end_lr)


def build_optimizer(model, learning_rate, total_steps, momentum=0.9, weight_decay=1e-4,
                    lr_power=1.0, warmup_steps=0):
    """SGD(momentum, nesterov=False) whose weight decay skips BatchNorm parameters and biases.

    Keras applies decay as ``w -= lr * weight_decay * w`` (decoupled, scaled by the LR).
    """
    schedule = WarmupPolyDecay(learning_rate, total_steps, lr_power, warmup_steps)
    optimizer = keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay or None)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer


def no_decay_variables(model):
    """BatchNorm gammas/betas and every bias: the variables that get no weight decay."""
    excluded = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            excluded += [v for v in (layer.gamma, layer.beta) if v is not None]
        elif getattr(layer, "bias", None) is not None:
            excluded.append(layer.bias)
    return excluded


def _all_layers(model):
    for layer in model.layers if hasattr(model, "layers") else []:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
