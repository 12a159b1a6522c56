"""Which Keras backend runs, and what it can do. Imports neither TensorFlow nor JAX itself.

The model code is ``keras.ops`` / ``keras.layers``; the few TensorFlow-only pieces live in
:mod:`hmsa_keras.models.tf_ops` and are chosen here, at run time, when
``keras.backend.backend() == "tensorflow"`` (docs/backends.md).
"""

from __future__ import annotations

import keras


def is_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def tf_ops():
    """:mod:`hmsa_keras.models.tf_ops` under the TensorFlow backend, else ``None``
    (imported lazily: other backends never import TensorFlow)."""
    if is_tensorflow():
        from hmsa_keras.models import tf_ops as module

        return module
    return None


def float64_available() -> bool:
    """False on JAX unless ``jax_enable_x64`` is on (JAX silently computes "float64" in
    float32 then); True on TensorFlow, PyTorch and NumPy."""
    if keras.backend.backend() != "jax":
        return True
    import jax

    return bool(jax.config.read("jax_enable_x64"))
