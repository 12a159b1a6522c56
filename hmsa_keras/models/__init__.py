"""Model family: trunks, heads, the single-scale segmenter, fusion and the HMSA model.

Backend-agnostic Keras 3 (TensorFlow, JAX): importing it does not import TensorFlow.
"""

from hmsa_keras.models.hmsa import HMSA
from hmsa_keras.models.segmenter import build_segmenter
from hmsa_keras.models.trunks import build_trunk

__all__ = ["HMSA", "build_segmenter", "build_trunk"]
