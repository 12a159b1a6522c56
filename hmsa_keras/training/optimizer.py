"""SGD with momentum, two weight-decay semantics, and a poly LR schedule stepped per iteration
or per epoch.

Weight decay (``weight_decay_mode``):

- ``coupled`` (the reference, ``loss/optimizer.py: get_optimizer`` =
  ``torch.optim.SGD(momentum=0.9, weight_decay=1e-4)``): L2 decay added to the gradient
  *before* momentum, on every trainable variable (BatchNorm and biases included), with
  PyTorch's momentum buffer (:class:`CoupledSGD`).
- ``decoupled`` (this project's earlier default): Keras' ``SGD(weight_decay=...)``, which
  applies ``w -= lr * weight_decay * w`` outside momentum, and skips BatchNorm parameters
  and biases (:func:`no_decay_variables`).

With momentum ``mu`` the coupled decay term accumulates in the momentum buffer, so at a
slowly varying LR it acts about ``1 / (1 - mu)`` times as strongly (10x at ``mu = 0.9``)
as a decoupled decay of the same coefficient: coupled 1e-4 ~ decoupled 1e-3.

LR schedule (``lr_schedule_granularity``, :class:`WarmupPolyDecay`):

- ``iteration``: poly decay evaluated at every step, after an optional linear warm-up.
- ``epoch`` (the reference: ``LambdaLR(lambda e: (1 - e / max_epoch) ** poly_exp)``,
  ``scheduler.step()`` once per epoch in ``train.py: main``): the LR is constant within
  an epoch, ``base * (1 - e / E) ** power`` in epoch ``e`` (0-based) of ``E``.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

WEIGHT_DECAY_MODES = ("coupled", "decoupled")
LR_SCHEDULE_GRANULARITIES = ("iteration", "epoch")


@keras.saving.register_keras_serializable(package="hmsa_keras")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Poly learning-rate decay with an optional linear warm-up, per iteration or per epoch.

    ``granularity="iteration"``: ``lr(t) = base * (t + 1) / warmup`` for ``t < warmup``
    (never 0, reaches ``base``), then ``(base - end) * (1 - t' / T') ** power + end`` with
    ``t' = t - warmup``, ``T' = total_steps - warmup``.

    ``granularity="epoch"`` (reference ``loss/optimizer.py: get_optimizer``, ``poly_schd``
    stepped once per epoch by ``train.py: main``): with ``e = floor(t / steps_per_epoch)``
    and ``E = total_steps / steps_per_epoch``,
    ``lr(t) = ((base - end) * (1 - e / E) ** power + end) * min(1, (t + 1) / warmup)``.
    The reference has no warm-up (``warmup_steps=0``); with one, the ramp multiplies the
    first epoch's LR instead of shifting the epoch boundaries. Computed in float64, so
    the LR equals PyTorch's ``LambdaLR`` value rounded once to float32.

    Args:
      base_lr: LR at step 0 (after warm-up), float.
      total_steps: steps of the whole run (epochs x steps_per_epoch), int >= 1.
      power: poly exponent (reference ``--poly_exp``: 2 Cityscapes, 1 Mapillary).
      warmup_steps: linear warm-up steps (0: none).
      end_lr: LR the poly decays to (0 in the reference).
      granularity: ``"iteration"`` or ``"epoch"``.
      steps_per_epoch: needed for ``granularity="epoch"``, int >= 1.
    Call: ``step`` int/float scalar tensor (the optimizer's ``iterations``) -> float32 LR.
    Raises:
      ValueError: unknown granularity, or ``"epoch"`` without ``steps_per_epoch >= 1``.
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        power=1.0,
        warmup_steps=0,
        end_lr=0.0,
        granularity="iteration",
        steps_per_epoch=None,
    ):
        if granularity not in LR_SCHEDULE_GRANULARITIES:
            raise ValueError(
                f"lr_schedule_granularity={granularity!r}: choose one of "
                f"{', '.join(LR_SCHEDULE_GRANULARITIES)}"
            )
        if granularity == "epoch" and (steps_per_epoch is None or int(steps_per_epoch) < 1):
            raise ValueError(
                "lr_schedule_granularity='epoch' needs steps_per_epoch >= 1, got "
                f"{steps_per_epoch!r}"
            )
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.end_lr = float(end_lr)
        self.granularity = granularity
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)

    def __call__(self, step):
        if self.granularity == "epoch":
            return self._per_epoch(step)
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 0))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        poly = (self.base_lr - self.end_lr) * (1.0 - progress) ** self.power + self.end_lr
        if self.warmup_steps > 0:
            return tf.where(step < warmup, self.base_lr * (step + 1.0) / warmup, poly)
        return poly

    def _per_epoch(self, step):
        step = tf.cast(step, tf.float64)
        epoch = tf.floor(step / float(self.steps_per_epoch))
        epochs = float(max(self.total_steps, 1)) / float(self.steps_per_epoch)
        progress = tf.clip_by_value(epoch / epochs, 0.0, 1.0)
        lr = (self.base_lr - self.end_lr) * (1.0 - progress) ** self.power + self.end_lr
        if self.warmup_steps > 0:
            lr = lr * tf.minimum((step + 1.0) / float(self.warmup_steps), 1.0)
        return tf.cast(lr, tf.float32)

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            power=self.power,
            warmup_steps=self.warmup_steps,
            end_lr=self.end_lr,
            granularity=self.granularity,
            steps_per_epoch=self.steps_per_epoch,
        )


@keras.saving.register_keras_serializable(package="hmsa_keras")
class CoupledSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay, step for step ``torch.optim.SGD``.

    For every variable ``w`` with gradient ``g`` at learning rate ``lr``
    (``dampening=0``, ``nesterov=False``, as the reference's ``loss/optimizer.py``)::

        d = g + l2 * w            # decay enters the gradient, so it passes through momentum
        b = momentum * b + d      # PyTorch's momentum buffer (b = d at the first step)
        w = w - lr * b

    This differs from ``keras.optimizers.SGD``, whose velocity ``v = mu * v - lr * g``
    already holds the LR: both agree at a constant LR but not while the LR changes (poly
    schedule). Every variable passed to ``apply_gradients`` is decayed, BatchNorm gammas,
    betas and biases included; variables without a gradient (frozen layers, weights outside
    the loss) are not touched, as in PyTorch where ``grad is None``.

    Works under ``tf.distribute`` strategies (the update runs per variable as in Keras'
    SGD), inside ``keras.optimizers.LossScaleOptimizer``, and its momentum buffers
    (``momentum_buffer`` slots, shape and dtype of their variable) are saved by
    ``tf.train.Checkpoint`` and in ``.keras`` files.

    Args:
      learning_rate: float or a ``LearningRateSchedule`` (e.g. :class:`WarmupPolyDecay`).
      momentum: float in [0, 1).
      l2: coupled weight-decay coefficient (``torch.optim.SGD(weight_decay=...)``), >= 0.
      **kwargs: ``keras.optimizers.Optimizer`` arguments (``name``, ``clipnorm``, ...);
        Keras' own (decoupled) ``weight_decay`` is refused.
    Raises:
      ValueError: momentum outside [0, 1), negative ``l2``, or ``weight_decay`` given.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=0.0, name="coupled_sgd", **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "CoupledSGD: pass the coupled decay as l2=..., not weight_decay "
                "(Keras' decoupled decay)"
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"CoupledSGD: momentum must be in [0, 1), got {momentum}")
        if float(l2) < 0.0:
            raise ValueError(f"CoupledSGD: l2 (weight decay) must be >= 0, got {l2}")
        self.momentum = float(momentum)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum:
            self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        if self.momentum:
            buf = self.momentum_buffers[self._get_variable_index(variable)]
            self.assign(
                buf, ops.add(ops.multiply(buf, ops.cast(self.momentum, variable.dtype)), gradient)
            )
            gradient = buf
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(momentum=self.momentum, l2=self.l2)
        return config


def build_optimizer(
    model,
    learning_rate,
    total_steps,
    momentum=0.9,
    weight_decay=1e-4,
    lr_power=1.0,
    warmup_steps=0,
    weight_decay_mode="decoupled",
    lr_schedule_granularity="iteration",
    steps_per_epoch=None,
):
    """The training optimizer: SGD(momentum) with a :class:`WarmupPolyDecay` schedule.

    Args:
      model: the Keras model (``decoupled`` mode reads its BatchNorm layers and biases to
        exclude them from decay; ``coupled`` decays every trainable variable).
      learning_rate: base LR (already scaled to the global batch).
      total_steps: steps of the whole run.
      momentum: SGD momentum in [0, 1).
      weight_decay: decay coefficient; its meaning depends on ``weight_decay_mode``.
      lr_power: poly exponent. warmup_steps: linear warm-up steps.
      weight_decay_mode: ``"coupled"`` (reference, :class:`CoupledSGD`) or ``"decoupled"``
        (``keras.optimizers.SGD(weight_decay=...)`` skipping BatchNorm and biases).
      lr_schedule_granularity: ``"iteration"`` or ``"epoch"`` (reference).
      steps_per_epoch: required for ``"epoch"``.
    Returns: a ``keras.optimizers.Optimizer`` (not yet built).
    Raises:
      ValueError: unknown mode or granularity, ``"epoch"`` without ``steps_per_epoch``,
        momentum outside [0, 1), negative weight decay.
    """
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"weight_decay_mode={weight_decay_mode!r}: choose one of "
            f"{', '.join(WEIGHT_DECAY_MODES)}"
        )
    if weight_decay is not None and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    schedule = WarmupPolyDecay(
        learning_rate,
        total_steps,
        lr_power,
        warmup_steps,
        granularity=lr_schedule_granularity,
        steps_per_epoch=steps_per_epoch,
    )
    if weight_decay_mode == "coupled":
        return CoupledSGD(schedule, momentum=float(momentum), l2=float(weight_decay or 0.0))
    optimizer = keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay or None)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer


def no_decay_variables(model):
    """BatchNorm gammas/betas and every bias: the variables ``decoupled`` mode does not decay."""
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
