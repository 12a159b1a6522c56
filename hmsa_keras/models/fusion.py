"""Multi-scale fusion as pure tensor functions (no layers, no state), on any Keras backend.

``outputs`` everywhere is a dict ``{scale: (logits, attention)}`` of float32 NHWC tensors,
each at the size of the image resized by that scale; ``attention`` is the attention
probability in [0, 1] (the segmenter applies the sigmoid before resizing, as the reference).
Hierarchical fusion follows Tao et al. 2020 (arXiv 2005.10821, s3) and the reference
``network/mscale.py: nscale_forward``:

    scales sorted descending; pred = logits of the largest scale; then for s:
      s >= 1: pred = a_s * L_s + (1 - a_s) * resize(pred, size_s)
      s <  1: pred = U(a_s * L_s) + (1 - U(a_s)) * pred            (U: up to pred's size)

so the lowest scale has the final say and the largest scale's attention is unused.
With scales (0.5, 1.0) this is the training fusion
``L = U(a_0.5 * L_0.5) + (1 - U(a_0.5)) * L_1.0``.

Backends: everything is ``keras.ops`` except the size/resize/argmax helpers below, which
under TensorFlow use :mod:`hmsa_keras.models.tf_ops` (dynamic sizes that export to
SavedModel/TFLite) and elsewhere ``keras.ops`` with the static shapes that JAX and
PyTorch always have. Both resize bilinearly with half-pixel centres and no antialias.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from hmsa_keras.backend import tf_ops


def spatial_size(x):
    """(H, W) of an NHWC tensor: an int32 tensor under TensorFlow (dynamic sizes), a tuple
    of ints on the other backends (whose shapes are static)."""
    t = tf_ops()
    if t is not None:
        return t.spatial_size(x)
    return tuple(int(d) for d in x.shape[1:3])


def resize(x, size):
    """Bilinear, half-pixel (align_corners=False), no-antialias resize of NHWC ``x`` to
    ``size`` = (h, w); keeps ``x``'s dtype."""
    t = tf_ops()
    if t is not None:
        return t.resize(x, size)
    size = tuple(int(s) for s in size)
    out = ops.image.resize(
        x, size, interpolation="bilinear", antialias=False, data_format="channels_last"
    )
    return ops.cast(out, x.dtype)


def scaled_size(images, scale):
    """(floor(H * scale), floor(W * scale)) of an NHWC batch, at least 1 pixel.

    float32 arithmetic (TFLite has no float64 builtins), so the Keras model, the
    SavedModel and the TFLite files agree; ``scale`` may be a Python number or (under
    TensorFlow) a tensor.
    """
    t = tf_ops()
    if t is not None:
        return t.scaled_size(images, scale)
    s = np.float32(scale)
    return tuple(max(int(np.floor(np.float32(d) * s)), 1) for d in images.shape[1:3])


def argmax_classes(logits):
    """int32 class map ``[..., ]`` from logits ``[..., K]``."""
    t = tf_ops()
    if t is not None:
        return t.argmax_classes(logits)
    return ops.cast(ops.argmax(logits, axis=-1), "int32")


def hierarchical_step(pred, logits, attn, scale):
    """One link of the chain (see module docstring): ``attn`` is the attention probability of
    scale ``scale`` (a Python number or a scalar tensor)."""

    def larger():  # s >= 1: bring pred down to s's size and let s speak where it attends
        return attn * logits + (1.0 - attn) * resize(pred, spatial_size(logits))

    def smaller():  # s < 1: multiply at low resolution, then upsample to pred's size
        size = spatial_size(pred)
        return resize(attn * logits, size) + (1.0 - resize(attn, size)) * pred

    if ops.is_tensor(scale):
        return ops.cond(scale >= 1.0, larger, smaller)
    return larger() if scale >= 1.0 else smaller()


def hierarchical(outputs):
    """Hierarchical attention chain over any scales (see module docstring). Returns
    logits at the size of the smallest scale >= 1 in the chain (the largest if none)."""
    scales = sorted(outputs, reverse=True)
    pred = outputs[scales[0]][0]
    for s in scales[1:]:
        pred = hierarchical_step(pred, outputs[s][0], outputs[s][1], s)
    return pred


def attention_scales(fusion, scales):
    """The scales whose attention ``fusion`` reads: hierarchical all but the largest,
    explicit all, the others none."""
    if fusion == "hierarchical":
        return tuple(sorted(scales)[:-1])
    return tuple(scales) if fusion == "explicit" else ()


def _score(attention, eps=1e-6):
    """The attention head's score ``log(a / (1 - a))`` (the inverse of its sigmoid)."""
    a = ops.clip(attention, eps, 1.0 - eps)
    return ops.log(a) - ops.log(1.0 - a)


def explicit(outputs, size):
    """Explicit attention to scale (Chen et al. 2016): softmax over scales of the
    attention scores (the heads' outputs before their sigmoid), weighting every scale's
    logits at ``size``."""
    scales = sorted(outputs)
    logits = ops.stack([resize(outputs[s][0], size) for s in scales], axis=0)
    weights = ops.softmax(
        ops.stack([_score(resize(outputs[s][1], size)) for s in scales], axis=0), axis=0
    )
    return ops.sum(weights * logits, axis=0)


def mean(outputs, size):
    return ops.mean(ops.stack([resize(o[0], size) for o in outputs.values()], axis=0), axis=0)


def maximum(outputs, size):
    return ops.max(ops.stack([resize(o[0], size) for o in outputs.values()], axis=0), axis=0)


def fuse_chain(outputs, chain, fusion, size, mirrored=None):
    """Fuses the scales of ``chain`` taken from ``outputs`` (which may hold more scales, e.g.
    the union of a sweep's chains). With ``mirrored``, the outputs of the horizontally
    flipped image, the result is averaged with their fusion flipped back (flip-TTA)."""
    logits = fuse({s: outputs[s][:2] for s in chain}, fusion, size)
    if mirrored is not None:
        other = fuse({s: mirrored[s][:2] for s in chain}, fusion, size)
        logits = 0.5 * (logits + ops.flip(other, axis=2))
    return logits


def fuse(outputs, fusion, size):
    """Dispatches on ``fusion`` and returns logits resized to ``size`` (the input size)."""
    if fusion == "hierarchical":
        fused = hierarchical(outputs)
    elif fusion == "explicit":
        fused = explicit(outputs, size)
    elif fusion == "mean":
        fused = mean(outputs, size)
    elif fusion == "max":
        fused = maximum(outputs, size)
    elif fusion == "single":
        fused = outputs[1.0][0] if 1.0 in outputs else mean(outputs, size)
    else:
        raise ValueError(f"Unknown fusion {fusion!r}")
    return resize(fused, size)  # identity when the chain already ends at ``size``
