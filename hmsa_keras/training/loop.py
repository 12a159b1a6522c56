"""The TensorFlow training step and the custom distributed loop.

:func:`train_step` / :func:`test_step` are HMSA's steps under TensorFlow (``HMSA.train_step``
hands over to them, so ``model.fit`` uses them too) and the custom loop runs them with
``strategy.run``: Keras ``fit`` works under the default and mirrored strategies, but not
under ``MultiWorkerMirroredStrategy`` in Keras 3.15, so the trainer uses this loop for every
strategy: one code path, the same step.

What only ``tf.distribute`` needs lives here, not in the model:

- :func:`global_mean`: each loss term is ``sum / weight`` over the *global* batch (the
  weights, e.g. valid-pixel counts, are all-reduced), so replicas whose crops hold fewer
  valid pixels do not count more; summing the replicas' gradients gives the gradient of the
  global mean.
- :func:`skip_if_any_replica_nonfinite`: Keras 3.15's ``LossScaleOptimizer`` decides per
  replica whether a gradient is finite; this makes every replica skip together.

The model's loss is :meth:`hmsa_keras.HMSA.compute_loss_terms`; on the other backends
Keras' own trainer calls :meth:`hmsa_keras.HMSA.compute_loss` (one device, local mean).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def global_mean(term):
    """(sum, weight) on this replica -> this replica's share of the global mean
    ``sum_r sum / max(sum_r weight, 1)`` (float32; the weight is not differentiated)."""
    loss_sum, weight = term
    weight = tf.cast(tf.stop_gradient(weight), tf.float32)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        weight = ctx.all_reduce(tf.distribute.ReduceOp.SUM, weight)
    return tf.cast(loss_sum, tf.float32) / tf.maximum(weight, 1.0)


def skip_if_any_replica_nonfinite(grads, optimizer):
    """Works around Keras 3.15's LossScaleOptimizer deciding finiteness per replica: if any
    replica has a non-finite gradient, every replica gets NaN gradients so the loss-scale
    optimizer skips the step everywhere and lowers the scale. A no-op on one replica or
    without a LossScaleOptimizer."""
    ctx = tf.distribute.get_replica_context()
    if (
        not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        or ctx is None
        or ctx.num_replicas_in_sync == 1
    ):
        return grads
    bad = tf.cast(
        tf.logical_not(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
        ),
        tf.float32,
    )
    # ReduceOp has no MAX: count the bad replicas
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    poison = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(0.0))
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def train_step(model, data):
    """One optimisation step of an HMSA ``model`` on ``(images, labels)`` (inside
    ``strategy.run`` under a strategy). Returns the loss trackers' results."""
    images, labels = data
    with tf.GradientTape() as tape:
        total, _, terms = model.compute_loss_terms(
            images, labels, training=True, reduce=global_mean
        )
        scaled = model.optimizer.scale_loss(total)
    variables = model.trainable_variables
    grads = tape.gradient(scaled, variables)
    grads = skip_if_any_replica_nonfinite(grads, model.optimizer)
    # weights outside the loss (the attention head in single-scale training) get no update
    model.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
    model.update_loss_trackers(total, terms, _replicas())
    return {n: t.result() for n, t in model.loss_trackers.items()}


def test_step(model, data):
    """Loss terms and the mIoU metric of ``model`` on ``(images, labels)``."""
    images, labels = data
    total, fused, terms = model.compute_loss_terms(
        images, labels, training=False, reduce=global_mean
    )
    model.update_loss_trackers(total, terms, _replicas())
    model.miou_metric.update_state(labels, fused)
    return {m.name: m.result() for m in model.metrics}


# How the training step is compiled. ``jit_compile=False``: XLA on CPU runs convolutions
# without oneDNN and measured slower (docs/benchmarks.md, "Against the PyTorch reference").
TRAIN_STEP_OPTIONS = {"jit_compile": False}


def train_step_options():
    """The ``tf.function`` options :func:`compile_train_step` and :func:`make_train_function`
    compile with (:data:`TRAIN_STEP_OPTIONS`; recorded by the benchmarks)."""
    return dict(TRAIN_STEP_OPTIONS)


def compile_train_step(model):
    """``model.train_step`` compiled as the trainer compiles it, for one device: a callable
    taking one ``(images, labels)`` batch and returning the logs (benchmarks, tests)."""
    return tf.function(model.train_step, **train_step_options())


def make_train_function(model, strategy, steps_per_call=1):
    """Returns a tf.function(iterator) running ``steps_per_call`` train steps; the logs
    it returns are the trackers' global means (read in cross-replica context)."""

    @tf.function(**train_step_options())
    def train(iterator):
        for _ in tf.range(steps_per_call):
            strategy.run(model.train_step, args=(next(iterator),))
        return {name: tracker.result() for name, tracker in model.loss_trackers.items()}

    return train


def make_test_function(model, strategy):
    @tf.function
    def test(batch):
        strategy.run(model.test_step, args=(batch,))

    return test


def evaluate(model, strategy, dataset, test_fn=None):
    """Runs ``test_step`` over a (distributed) dataset; returns logs and the confusion matrix.

    Pass the same ``test_fn`` (from :func:`make_test_function`) on every call to trace once
    per run instead of once per validation."""
    for metric in model.metrics:
        metric.reset_state()
    test = test_fn or make_test_function(model, strategy)
    for batch in dataset:
        test(batch)
    logs = {m.name: float(m.result()) for m in model.metrics}
    return logs, model.miou_metric.matrix()
