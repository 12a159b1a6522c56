"""hmsa-train whose total loss becomes NaN from a given (1-based) step on.

    python nan_driver.py NAN_FROM_STEP <hmsa-train flags...>

Patches ``HMSA.compute_loss_terms`` to add NaN to the training loss once
``optimizer.iterations + 1 >= NAN_FROM_STEP`` and then runs the real command-line tool.
"""

import sys

import common  # noqa: F401  (puts the repository on sys.path)

nan_from = int(sys.argv[1])

import tensorflow as tf  # noqa: E402

from hmsa_keras.models import hmsa as hmsa_module  # noqa: E402

_compute = hmsa_module.HMSA.compute_loss_terms


def compute_loss_terms(self, images, labels, training=True, **kwargs):
    total, fused, terms = _compute(self, images, labels, training, **kwargs)
    if training:
        step = tf.cast(self.optimizer.iterations, tf.float32) + 1.0
        total = total + tf.where(step >= float(nan_from), float("nan"), 0.0)
    return total, fused, terms


hmsa_module.HMSA.compute_loss_terms = compute_loss_terms

from hmsa_keras.cli import train as cli  # noqa: E402

sys.argv = ["hmsa-train"] + sys.argv[2:]
cli.run()
