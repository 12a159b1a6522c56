"""Segmentation losses: pixel-wise cross-entropy and Region Mutual Information (RMI).

Every loss here is a pure TensorFlow function ``fn(labels, logits) -> (loss_sum, weight)``:

* ``labels``: integer class map ``[B, H, W]`` (a trailing channel of size 1 is squeezed);
  any value outside ``[0, K)`` (e.g. 255) is ignored.
* ``logits``: ``[B, H, W, K]``, any float dtype (float16/bfloat16 logits of a mixed
  precision model are cast to float32 first; RMI's matrix algebra runs in float64).
* The loss value is ``loss_sum / weight``. Returning the pair instead of the ratio lets a
  caller normalise *globally* under ``tf.distribute``: all-reduce (SUM) both numbers over
  the replicas, then divide. On a single replica just divide (use
  :func:`reduce_loss` / ``tf.math.divide_no_nan``; ``weight`` is 0 when a batch has no
  valid pixel).

Both functions only use ops that run inside ``strategy.run`` (no Python-side values of
tensors), with static or dynamic ``H``/``W``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf

IGNORE_LABEL = 255

# RMI constants, as in the reference implementation (Zhao et al. 2019).
RMI_CLIP_MIN = 1e-6      # added to the masked sigmoid probabilities
RMI_POS_ALPHA = 5e-4     # times identity, keeps the covariance matrices positive definite
RMI_LOG_EPS = 1e-8       # added to the Cholesky diagonal before the log

LossFn = Callable[[tf.Tensor, tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]

__all__ = [
    "IGNORE_LABEL",
    "cross_entropy",
    "rmi_loss",
    "get_loss",
    "reduce_loss",
    "LOSSES",
]


def _prepare(labels, logits):
    """Cast logits to float32, labels to int32 ``[B, H, W]``; return (labels, logits, K)."""
    logits = tf.convert_to_tensor(logits)
    if logits.dtype != tf.float32:
        logits = tf.cast(logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:
        labels = tf.squeeze(labels, axis=-1)
    if labels.dtype != tf.int32:
        # Float labels (e.g. from a resize) are rounded, not truncated.
        if labels.dtype.is_floating:
            labels = tf.round(labels)
        labels = tf.cast(labels, tf.int32)
    num_classes = logits.shape[-1]
    if num_classes is None:
        raise ValueError("logits must have a static number of classes (last axis).")
    return labels, logits, int(num_classes)


def _class_weight_tensor(class_weights, k):
    """None, or the weights as a float32 [K] tensor (ValueError if not K of them)."""
    if class_weights is None:
        return None
    w = tf.constant(class_weights, dtype=tf.float32)
    if w.shape.rank != 1 or w.shape[0] != k:
        raise ValueError(f"class_weights must have length {k}, got shape {w.shape}")
    return w


def _valid_mask(labels, num_classes):
    return tf.logical_and(labels >= 0, labels < num_classes)


def cross_entropy(labels, logits, ignore_label: int = IGNORE_LABEL,
                  class_weights: Optional[Sequence[float]] = None):
    """Softmax cross-entropy over valid pixels.

    Pixels whose label is outside ``[0, K)`` (which includes ``ignore_label``) are ignored.

    Returns ``(loss_sum, weight)`` (float32 scalars):

    * unweighted: ``loss_sum = sum_i nll_i``, ``weight = #valid pixels``;
    * with ``class_weights`` (length K), PyTorch ``CrossEntropyLoss(weight=w)`` semantics:
      ``loss_sum = sum_i w[y_i] * nll_i``, ``weight = sum_i w[y_i]``.
    """
    del ignore_label  # every label outside [0, K) is ignored, ignore_label included
    labels, logits, k = _prepare(labels, logits)
    valid = _valid_mask(labels, k)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    mask = tf.cast(valid, tf.float32)
    w = _class_weight_tensor(class_weights, k)
    pix_w = mask if w is None else tf.gather(w, safe_labels) * mask
    loss_sum = tf.reduce_sum(nll * pix_w)
    weight = tf.reduce_sum(pix_w)
    return loss_sum, weight


def _avg_pool_like_reference(x, stride):
    """Average pooling, kernel = stride, zero padding stride//2 counted in the mean.

    Matches PyTorch ``avg_pool2d(kernel_size=s, stride=s, padding=s//2)`` with the default
    ``count_include_pad=True``: output size ``floor(H/s) + 1`` when ``s`` is even.
    """
    pad = stride // 2
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return tf.nn.avg_pool2d(x, ksize=stride, strides=stride, padding="VALID")


def _neighbourhood_vectors(x, radius):
    """``[B, h, w, K]`` -> ``[B, K, radius*radius, (h-radius+1)*(w-radius+1)]``.

    Each of the ``radius**2`` rows is the map shifted by (dy, dx) and cropped to the
    ``(h - radius + 1, w - radius + 1)`` window, so column n holds the square
    neighbourhood of one location.
    """
    shape = tf.shape(x)
    new_h = shape[1] - (radius - 1)
    new_w = shape[2] - (radius - 1)
    crops = []
    for dy in range(radius):
        for dx in range(radius):
            crops.append(x[:, dy:dy + new_h, dx:dx + new_w, :])
    v = tf.stack(crops, axis=1)                                   # [B, D, h', w', K]
    v = tf.reshape(v, [shape[0], radius * radius, -1, shape[3]])  # [B, D, N, K]
    return tf.transpose(v, [0, 3, 1, 2])                          # [B, K, D, N]


def _log_det_cholesky(m):
    chol = tf.linalg.cholesky(m)
    return 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol) + RMI_LOG_EPS), axis=-1)


def rmi_lower_bound_per_sample(onehot, probs, radius: int = 3, pool_stride: int = 4):
    """Per-sample, per-class RMI lower-bound term ``[B, K]`` (float64), already / D.

    ``onehot`` and ``probs`` are ``[B, H, W, K]`` float (masked at ignore pixels).
    For each class: ``0.5 * log det(Sigma_Y - Sigma_YP Sigma_P^-1 Sigma_YP^T + a I) / D``
    with ``D = radius**2`` and ``a = 5e-4`` (``Sigma_P`` also gets ``+ a I``). The
    covariances are un-normalised (sums, not means), as in the reference.
    """
    if pool_stride > 1:
        onehot = _avg_pool_like_reference(onehot, pool_stride)
        probs = _avg_pool_like_reference(probs, pool_stride)
    d = radius * radius
    la = tf.cast(_neighbourhood_vectors(onehot, radius), tf.float64)
    pr = tf.cast(_neighbourhood_vectors(probs, radius), tf.float64)
    la = tf.stop_gradient(la - tf.reduce_mean(la, axis=-1, keepdims=True))
    pr = pr - tf.reduce_mean(pr, axis=-1, keepdims=True)
    eye = tf.eye(d, dtype=tf.float64)
    la_cov = tf.matmul(la, la, transpose_b=True)                  # [B, K, D, D]
    pr_cov = tf.matmul(pr, pr, transpose_b=True) + RMI_POS_ALPHA * eye
    la_pr_cov = tf.matmul(la, pr, transpose_b=True)
    # Sigma_YP Sigma_P^-1 Sigma_YP^T via a Cholesky solve (same value as an inverse).
    pr_chol = tf.linalg.cholesky(pr_cov)
    solved = tf.linalg.cholesky_solve(pr_chol, tf.linalg.matrix_transpose(la_pr_cov))
    appro_var = la_cov - tf.matmul(la_pr_cov, solved)
    # symmetrise against round-off before the Cholesky
    appro_var = 0.5 * (appro_var + tf.linalg.matrix_transpose(appro_var))
    rmi = 0.5 * _log_det_cholesky(appro_var + RMI_POS_ALPHA * eye)  # [B, K]
    return rmi / float(d)


def rmi_loss(labels, logits, ignore_label: int = IGNORE_LABEL, num_classes: Optional[int] = None,
             radius: int = 3, pool_stride: int = 4, lambda_way: int = 1,
             bce_weight: float = 0.5, rmi_weight: float = 0.5,
             class_weights: Optional[Sequence[float]] = None):
    """Region Mutual Information loss (Zhao et al., NeurIPS 2019), sigmoid variant.

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
    """
    del ignore_label  # every label outside [0, K) is ignored, ignore_label included
    labels, logits, k = _prepare(labels, logits)
    if num_classes is not None and int(num_classes) != k:
        raise ValueError(f"num_classes={num_classes} but logits have {k} channels")
    valid = _valid_mask(labels, k)
    mask = tf.cast(valid, tf.float32)[..., None]                  # [B, H, W, 1]
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    onehot = tf.one_hot(safe_labels, k, dtype=tf.float32) * mask  # [B, H, W, K]

    cw = _class_weight_tensor(class_weights, k)

    # Part I: sigmoid BCE on one-hot targets, ignore pixels masked.
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits) * mask
    if cw is not None:
        bce = bce * cw
    bce_loss = tf.reduce_sum(bce) / (tf.reduce_sum(mask) + 1.0)

    # Part II: RMI lower bound.
    probs = tf.sigmoid(logits) * mask + RMI_CLIP_MIN
    rmi_bk = rmi_lower_bound_per_sample(tf.stop_gradient(onehot), probs, radius, pool_stride)
    rmi_bk = tf.cast(rmi_bk, tf.float32)                          # [B, K]
    if cw is not None:
        rmi_bk = rmi_bk * cw
    rmi_per_sample_sum = tf.reduce_sum(rmi_bk)                     # sum_b sum_k
    batch = tf.cast(tf.shape(logits)[0], tf.float32)

    if lambda_way:
        loss_sum = bce_weight * bce_loss * batch + rmi_weight * rmi_per_sample_sum
    else:
        loss_sum = bce_loss * batch + rmi_weight * rmi_per_sample_sum
    return loss_sum, batch


LOSSES = {"ce": cross_entropy, "rmi": rmi_loss}


def get_loss(name: str, **kw) -> LossFn:
    """Return ``fn(labels, logits) -> (loss_sum, weight)`` for ``'ce'`` or ``'rmi'``.

    Keyword arguments are bound to the loss (e.g. ``ignore_label``, ``class_weights``).
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
    return tf.math.divide_no_nan(loss_sum, weight)
