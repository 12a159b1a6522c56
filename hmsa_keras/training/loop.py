"""The custom distributed loop: ``strategy.run`` of the model's own train/test step.

Keras ``fit`` works with ``HMSA.train_step`` under the default and mirrored
strategies, but not under ``MultiWorkerMirroredStrategy`` in Keras 3 (REFERENCE s7),
so the trainer uses this loop for every strategy: one code path, the same step.
"""

from __future__ import annotations

import tensorflow as tf


def make_train_function(model, strategy, steps_per_call=1):
    """Returns a tf.function(iterator) running ``steps_per_call`` train steps; the logs
    it returns are the trackers' global means (read in cross-replica context)."""

    @tf.function
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
