"""Segmentation losses: pixel-wise cross-entropy and Region Mutual Information (RMI).

Every loss here is a ``keras.ops`` function (any Keras backend)
``fn(labels, logits) -> (loss_sum, weight)``:

* ``labels``: integer class map ``[B, H, W]`` (a trailing channel of size 1 is squeezed).
  One rule, shared with :mod:`hmsa_keras.metrics`: a pixel whose label is outside
  ``[0, K)`` takes no part in the loss. The data pipeline writes
  :data:`hmsa_keras.conventions.IGNORE_LABEL` (255) for void pixels, which is outside
  ``[0, K)`` because :class:`~hmsa_keras.HMSA` requires ``K <= IGNORE_LABEL``. There is no
  ``ignore_label`` parameter: it could only restate that rule.
* ``logits``: ``[B, H, W, K]``, any float dtype (float16/bfloat16 logits of a mixed
  precision model are cast to float32 first).
* The loss value is ``loss_sum / weight``. Returning the pair instead of the ratio lets a
  caller normalise *globally* under ``tf.distribute``: all-reduce (SUM) the weights over
  the replicas, then divide (:func:`hmsa_keras.training.loop.global_mean`). On one device
  just divide (:func:`reduce_loss`; ``weight`` is 0 when a batch has no valid pixel).

Both run inside ``strategy.run`` and under ``jax.jit``, with static or (TensorFlow) dynamic
``H``/``W``.

RMI's log-determinants are computed in float64, as the reference does
(``loss/rmi.py: RMILoss``). On JAX float64 exists only with ``jax_enable_x64``
(``JAX_ENABLE_X64=1`` before importing JAX); without it they run in float32 and a warning
says so once (docs/backends.md).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Tuple

import keras
from keras import ops

from hmsa_keras.backend import float64_available, tf_ops
from hmsa_keras.conventions import IGNORE_LABEL

# RMI constants, as in the reference implementation (Zhao et al. 2019).
RMI_CLIP_MIN = 1e-6  # added to the masked sigmoid probabilities
RMI_POS_ALPHA = 5e-4  # times identity, keeps the covariance matrices positive definite
RMI_LOG_EPS = 1e-8  # added to the Cholesky diagonal before the log

LossFn = Callable[..., Tuple[object, object]]

__all__ = [
    "IGNORE_LABEL",
    "cross_entropy",
    "rmi_loss",
    "get_loss",
    "reduce_loss",
    "LOSSES",
]


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _prepare(labels, logits):
    """Cast logits to float32, labels to int32 ``[B, H, W]``; return (labels, logits, K)."""
    logits = ops.convert_to_tensor(logits)
    if _dtype(logits) != "float32":
        logits = ops.cast(logits, "float32")
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 4:
        labels = ops.squeeze(labels, axis=-1)
    if _dtype(labels) != "int32":
        # Float labels (e.g. from a resize) are rounded, not truncated.
        if "float" in _dtype(labels):
            labels = ops.round(labels)
        labels = ops.cast(labels, "int32")
    num_classes = logits.shape[-1]
    if num_classes is None:
        raise ValueError("logits must have a static number of classes (last axis).")
    return labels, logits, int(num_classes)


def _class_weight_tensor(class_weights, k):
    """None, or the weights as a float32 [K] tensor (ValueError if not K of them)."""
    if class_weights is None:
        return None
    w = [float(v) for v in class_weights]
    if len(w) != k:
        raise ValueError(f"class_weights must have length {k} (one per class), got {len(w)}")
    return ops.convert_to_tensor(w, "float32")


def _valid_mask(labels, num_classes):
    return ops.logical_and(labels >= 0, labels < num_classes)


def cross_entropy(labels, logits, class_weights: Optional[Sequence[float]] = None):
    """Softmax cross-entropy over the pixels whose label is in ``[0, K)``.

    Returns ``(loss_sum, weight)`` (float32 scalars):

    * unweighted: ``loss_sum = sum_i nll_i``, ``weight = #valid pixels``;
    * with ``class_weights`` (length K), PyTorch ``CrossEntropyLoss(weight=w)`` semantics:
      ``loss_sum = sum_i w[y_i] * nll_i``, ``weight = sum_i w[y_i]``.

    Raises ValueError if ``class_weights`` does not have K entries.
    """
    labels, logits, k = _prepare(labels, logits)
    valid = _valid_mask(labels, k)
    safe_labels = ops.where(valid, labels, ops.zeros_like(labels))
    nll = ops.sparse_categorical_crossentropy(safe_labels, logits, from_logits=True)
    mask = ops.cast(valid, "float32")
    w = _class_weight_tensor(class_weights, k)
    pix_w = mask if w is None else ops.take(w, safe_labels) * mask
    return ops.sum(nll * pix_w), ops.sum(pix_w)


def _avg_pool_like_reference(x, stride):
    """Average pooling, kernel = stride, zero padding stride//2 counted in the mean.

    Matches PyTorch ``avg_pool2d(kernel_size=s, stride=s, padding=s//2)`` with the default
    ``count_include_pad=True``: output size ``floor(H/s) + 1`` when ``s`` is even.
    """
    pad = stride // 2
    x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return ops.average_pool(
        x, pool_size=stride, strides=stride, padding="valid", data_format="channels_last"
    )


def _neighbourhood_vectors(x, radius):
    """``[B, h, w, K]`` -> ``[B, K, radius*radius, (h-radius+1)*(w-radius+1)]``.

    Each of the ``radius**2`` rows is the map shifted by (dy, dx) and cropped to the
    ``(h - radius + 1, w - radius + 1)`` window, so column n holds the square
    neighbourhood of one location.
    """
    shape = ops.shape(x)
    new_h = shape[1] - (radius - 1)
    new_w = shape[2] - (radius - 1)
    crops = []
    for dy in range(radius):
        for dx in range(radius):
            crops.append(x[:, dy : dy + new_h, dx : dx + new_w, :])
    v = ops.stack(crops, axis=1)  # [B, D, h', w', K]
    v = ops.reshape(v, (shape[0], radius * radius, -1, shape[3]))  # [B, D, N, K]
    return ops.transpose(v, (0, 3, 1, 2))  # [B, K, D, N]


def _transpose(m):
    return ops.swapaxes(m, -1, -2)


def _cholesky(m):
    t = tf_ops()
    return t.cholesky(m) if t is not None else ops.cholesky(m)


def _cholesky_solve(chol, rhs):
    """``A^-1 rhs`` for ``A = chol chol^T`` (two triangular solves)."""
    t = tf_ops()
    if t is not None:
        return t.cholesky_solve(chol, rhs)
    y = ops.solve_triangular(chol, rhs, lower=True)
    return ops.solve_triangular(_transpose(chol), y, lower=False)


def _log_det_cholesky(m):
    chol = _cholesky(m)
    return 2.0 * ops.sum(ops.log(ops.diagonal(chol, axis1=-2, axis2=-1) + RMI_LOG_EPS), axis=-1)


_WARNED_FLOAT32 = []


def rmi_dtype():
    """float64 where the backend has it; float32 on JAX without ``jax_enable_x64`` (warns once)."""
    if float64_available():
        return "float64"
    if not _WARNED_FLOAT32:
        _WARNED_FLOAT32.append(True)
        warnings.warn(
            "RMI loss: JAX has float64 disabled (jax_enable_x64), so the RMI "
            "log-determinants run in float32; set JAX_ENABLE_X64=1 before importing "
            "JAX for the reference's float64 (docs/backends.md)",
            stacklevel=3,
        )
    return "float32"


def rmi_lower_bound_per_sample(onehot, probs, radius: int = 3, pool_stride: int = 4):
    """Per-sample, per-class RMI lower-bound term ``[B, K]`` (float64, see
    :func:`rmi_dtype`), already / D.

    ``onehot`` and ``probs`` are ``[B, H, W, K]`` float (masked at ignore pixels).
    For each class: ``0.5 * log det(Sigma_Y - Sigma_YP Sigma_P^-1 Sigma_YP^T + a I) / D``
    with ``D = radius**2`` and ``a = 5e-4`` (``Sigma_P`` also gets ``+ a I``). The
    covariances are un-normalised (sums, not means), as in the reference
    (``loss/rmi.py: RMILoss.rmi_lower_bound``).
    """
    if pool_stride > 1:
        onehot = _avg_pool_like_reference(onehot, pool_stride)
        probs = _avg_pool_like_reference(probs, pool_stride)
    d = radius * radius
    dtype = rmi_dtype()
    la = ops.cast(_neighbourhood_vectors(onehot, radius), dtype)
    pr = ops.cast(_neighbourhood_vectors(probs, radius), dtype)
    la = ops.stop_gradient(la - ops.mean(la, axis=-1, keepdims=True))
    pr = pr - ops.mean(pr, axis=-1, keepdims=True)
    eye = ops.eye(d, dtype=dtype)
    la_cov = ops.matmul(la, _transpose(la))  # [B, K, D, D]
    pr_cov = ops.matmul(pr, _transpose(pr)) + RMI_POS_ALPHA * eye
    la_pr_cov = ops.matmul(la, _transpose(pr))
    # Sigma_YP Sigma_P^-1 Sigma_YP^T via a Cholesky solve (same value as an inverse).
    solved = _cholesky_solve(_cholesky(pr_cov), _transpose(la_pr_cov))
    appro_var = la_cov - ops.matmul(la_pr_cov, solved)
    # symmetrise against round-off before the Cholesky
    appro_var = 0.5 * (appro_var + _transpose(appro_var))
    rmi = 0.5 * _log_det_cholesky(appro_var + RMI_POS_ALPHA * eye)  # [B, K]
    return rmi / float(d)


def rmi_loss(
    labels,
    logits,
    num_classes: Optional[int] = None,
    radius: int = 3,
    pool_stride: int = 4,
    lambda_way: int = 1,
    bce_weight: float = 0.5,
    rmi_weight: float = 0.5,
    class_weights: Optional[Sequence[float]] = None,
):
    """Region Mutual Information loss (Zhao et al., NeurIPS 2019), sigmoid variant
    (reference ``loss/rmi.py: RMILoss``).

    ``value = bce_weight * BCE + rmi_weight * RMI`` (``lambda_way=1``, reference default
    0.5/0.5) or ``value = BCE + rmi_weight * RMI`` (``lambda_way=0``), where

    * BCE = sum over valid pixels and classes of sigmoid cross-entropy against the one-hot
      target, divided by ``(#valid pixels + 1)`` (local batch);
    * RMI = sum over classes of the batch-mean of the per-sample lower bound term (see
      :func:`rmi_lower_bound_per_sample`), computed on ``sigmoid(logits) * mask + 1e-6`` and
      the masked one-hot labels after ``pool_stride`` average pooling.

    ``class_weights`` (optional, length K; not in the reference) multiplies each class's BCE
    and RMI terms.

    Returns ``(value * B_local, B_local)`` (float32) so that summing both over replicas
    and dividing yields the batch-size-weighted mean of the per-replica values.
    Needs ``H // pool_stride + 1 >= radius`` (e.g. ``H >= 8`` with the defaults).
    Raises ValueError if ``num_classes`` is given and differs from the logits' K.
    """
    labels, logits, k = _prepare(labels, logits)
    if num_classes is not None and int(num_classes) != k:
        raise ValueError(f"num_classes={num_classes} but logits have {k} channels")
    valid = _valid_mask(labels, k)
    mask = ops.expand_dims(ops.cast(valid, "float32"), -1)  # [B, H, W, 1]
    safe_labels = ops.where(valid, labels, ops.zeros_like(labels))
    onehot = ops.one_hot(safe_labels, k, dtype="float32") * mask  # [B, H, W, K]

    cw = _class_weight_tensor(class_weights, k)

    # Part I: sigmoid BCE on one-hot targets, ignore pixels masked.
    bce = ops.binary_crossentropy(onehot, logits, from_logits=True) * mask
    if cw is not None:
        bce = bce * cw
    bce_loss = ops.sum(bce) / (ops.sum(mask) + 1.0)

    # Part II: RMI lower bound.
    probs = ops.sigmoid(logits) * mask + RMI_CLIP_MIN
    rmi_bk = rmi_lower_bound_per_sample(ops.stop_gradient(onehot), probs, radius, pool_stride)
    rmi_bk = ops.cast(rmi_bk, "float32")  # [B, K]
    if cw is not None:
        rmi_bk = rmi_bk * cw
    rmi_per_sample_sum = ops.sum(rmi_bk)  # sum_b sum_k
    batch = ops.cast(ops.shape(logits)[0], "float32")

    if lambda_way:
        loss_sum = bce_weight * bce_loss * batch + rmi_weight * rmi_per_sample_sum
    else:
        loss_sum = bce_loss * batch + rmi_weight * rmi_per_sample_sum
    return loss_sum, batch


LOSSES = {"ce": cross_entropy, "rmi": rmi_loss}


def get_loss(name: str, **kw) -> LossFn:
    """Return ``fn(labels, logits) -> (loss_sum, weight)`` for ``'ce'`` or ``'rmi'``.

    Keyword arguments are bound to the loss (e.g. ``class_weights``). Raises ValueError
    for another name.
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; allowed: {sorted(LOSSES)}")
    base = LOSSES[key]

    def loss_fn(labels, logits):
        return base(labels, logits, **kw)

    loss_fn.__name__ = f"{key}_loss"
    return loss_fn


def reduce_loss(loss_sum, weight):
    """``loss_sum / weight`` with 0 when ``weight == 0`` (e.g. an all-ignore batch)."""
    return ops.divide_no_nan(loss_sum, weight)
