"""``HMSA``: the Keras model that runs one shared segmenter at several scales.

- ``model(images)`` runs the training scheme of ``fusion`` over ``train_scales``
  (hierarchical 0.5 + 1.0 by default) and returns fused logits at input size.
- ``model.segment(images, scales, flip)`` runs any inference chain and returns the
  fused logits, the class map and, on request, each scale's logits and attention.
- ``train_step``/``test_step`` implement the reference loss
  ``1.0 L(fused) + 0.4 L(fused aux) + 0.05 sum_s L(U(L_s))`` and are shared by
  ``model.fit`` and the custom distributed loop (:mod:`hmsa_keras.training.loop`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from hmsa_keras.config import FUSIONS
from hmsa_keras.models import fusion as F
from hmsa_keras.models.segmenter import build_segmenter, resolve_head

FREEZE_GROUPS = {
    "trunk": ("trunk",),
    "seg_head": ("aspp_", "decoder_", "seg_", "aux_", "ocr_", "logits", "aux_logits"),
    "attention": ("attn_", "attention_logits"),
}


MIN_SIDE = 16  # the smallest image side every trunk handles at every scale


def check_min_size(shape, scales):
    """Clear error for images too small at some scale (when the shape is known statically)."""
    if len(shape) != 4 or shape[-1] not in (3, None):
        raise ValueError(f"images must be a [batch, height, width, 3] tensor, got shape {tuple(shape)}")
    if shape[1] is None or shape[2] is None:
        return
    for s in scales:
        h, w = int(shape[1] * s), int(shape[2] * s)
        if min(h, w) < MIN_SIDE:
            raise ValueError(
                f"image of {shape[1]}x{shape[2]} is {h}x{w} at scale {s:g}: HMSA needs at least "
                f"{MIN_SIDE} pixels per side at every scale; use a larger image or drop scale {s:g}")


def validate_scales(scales):
    """Returns the scales as a sorted tuple of floats, or raises a ValueError saying what is allowed."""
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of positive numbers, got {scales!r}") from None
    if not scales:
        raise ValueError("scales must not be empty: give at least one positive scale, e.g. (1.0,)")
    if any(not s > 0 for s in scales):
        raise ValueError(f"every scale must be > 0, got {scales}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must be distinct, got {scales}")
    return tuple(sorted(scales))


@keras.saving.register_keras_serializable(package="hmsa_keras")
class HMSA(keras.Model):
    """Hierarchical Multi-Scale Attention segmentation model (Tao et al. 2020).

    All constructor arguments are stored and returned by ``get_config``; the
    ``segmenter`` arguments are those of :func:`build_segmenter`.
    """

    def __init__(self, num_classes, trunk="mobilenetv2", alpha=1.0, output_stride=16, weights=None,
                 bn_momentum=0.9, sync_bn=False, aspp_channels=256, decoder_channels=256,
                 low_level_channels=48, attention_head="conv", attention_channels=256,
                 aux_head=False, dropout=0.0, fusion="hierarchical", train_scales=(0.5, 1.0),
                 ignore_label=255, hrnet_width=48, head=None, ocr_mid_channels=512,
                 ocr_key_channels=256, ocr_dropout=0.05, **kwargs):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.network_config = dict(
            num_classes=num_classes, trunk=trunk, alpha=alpha, output_stride=output_stride,
            weights=weights, bn_momentum=bn_momentum, sync_bn=sync_bn, aspp_channels=aspp_channels,
            decoder_channels=decoder_channels, low_level_channels=low_level_channels,
            attention_head=attention_head, attention_channels=attention_channels,
            aux_head=aux_head, dropout=dropout)
        if resolve_head(trunk, head) == "ocr":  # issue 15; OCR's soft object regions are its aux
            self.network_config.update(dict(
                aux_head=True, hrnet_width=hrnet_width, head="ocr",
                ocr_mid_channels=ocr_mid_channels, ocr_key_channels=ocr_key_channels,
                ocr_dropout=ocr_dropout))
        self.network = build_segmenter(**self.network_config)
        self.num_classes = num_classes
        self.fusion = fusion
        self.train_scales = (1.0,) if fusion == "single" else validate_scales(train_scales)
        self.ignore_label = ignore_label
        self.loss_terms = {}
        self._loss_fn = None
        self.built = True  # every weight exists once the segmenter is built

    # ------------------------------------------------------------------ forward
    def run_scales(self, images, scales, training=False, attention=None):
        """Runs the segmenter at each scale: {scale: (logits, attention_logits, aux or None)}.

        ``attention``: the scales whose attention is needed (default all). At the others the
        attention head does not run and ``None`` stands in its place; in training that saves
        its forward pass, which BatchNorm's moving-statistics updates would otherwise keep alive.
        """
        check_min_size(images.shape, scales)
        outputs = {}
        for s in scales:
            x = images if s == 1.0 else F.resize(images, F.scaled_size(images, s))
            net = self.network if attention is None or s in attention else self._network_without_attention()
            out = net(x, training=training)
            outputs[s] = (out["logits"], out.get("attention_logits"), out.get("aux_logits"))
        return outputs

    def _network_without_attention(self):
        """The segmenter minus its attention head: same layers and weights, not tracked twice."""
        cached = self.__dict__.get("_without_attention")
        if cached is None or cached[0] is not self.network:
            outputs = {k: v for k, v in self.network.output.items() if k != "attention_logits"}
            view = keras.Model(self.network.input, outputs, name="segmenter_without_attention",
                               dtype=self.network.dtype_policy)
            object.__setattr__(self, "_without_attention", (self.network, view))  # bypasses tracking
        return self.__dict__["_without_attention"][1]

    def _fuse(self, outputs, size, fusion=None, index=0):
        pairs = {s: (o[index], o[1]) for s, o in outputs.items()}
        return F.fuse(pairs, fusion or self.fusion, size)

    def call(self, images, training=False):
        return self._fuse(self._run_train_scales(images, training), tf.shape(images)[1:3])

    def _run_train_scales(self, images, training):
        """``run_scales`` over ``train_scales``, with attention only where ``fusion`` reads it."""
        return self.run_scales(images, self.train_scales, training,
                               F.attention_scales(self.fusion, self.train_scales))

    def segment(self, images, scales=(0.5, 1.0, 2.0), flip=False, fusion=None, return_details=False):
        """Inference with any scale chain.

        Returns a dict with ``logits`` (fused, input size), ``classes`` (int32 argmax)
        and, with ``return_details``, ``scale_logits`` and ``attention`` (sigmoid maps),
        each a dict keyed by scale, resized to the input size.
        """
        scales = validate_scales(scales)
        size = tf.shape(images)[1:3]
        attention = None if return_details else F.attention_scales(fusion or self.fusion, scales)
        outputs = self.run_scales(images, scales, attention=attention)
        mirrored = self.run_scales(tf.reverse(images, axis=[2]), scales, attention=attention) if flip else None
        logits = F.fuse_chain(outputs, scales, fusion or self.fusion, size, mirrored)
        result = {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}
        if return_details:
            result["scale_logits"] = {s: F.resize(o[0], size) for s, o in outputs.items()}
            result["attention"] = {s: F.resize(tf.sigmoid(o[1]), size) for s, o in outputs.items()}
        return result

    # ------------------------------------------------------------------ training
    def compile(self, optimizer="sgd", loss="ce", aux_weight=0.4, scale_loss_weight=0.05,
                class_weights=None, **kwargs):
        """``loss``: a name understood by :func:`hmsa_keras.losses.get_loss` or a callable
        ``(labels, logits) -> (loss_sum, weight)``."""
        from hmsa_keras import losses, metrics

        super().compile(optimizer=optimizer, **kwargs)
        self._loss_fn = loss if callable(loss) else losses.get_loss(
            loss, ignore_label=self.ignore_label, class_weights=class_weights)
        self._ce_fn = losses.get_loss("ce", ignore_label=self.ignore_label, class_weights=class_weights)
        self.aux_weight = aux_weight
        self.scale_loss_weight = scale_loss_weight
        names = ["loss", "fused"] + (["aux"] if self.network_config["aux_head"] else [])
        if self.scale_loss_weight and self.fusion != "single":
            names += [f"scale_{s:g}" for s in self.train_scales]
        self.loss_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.miou_metric = metrics.ConfusionMatrixMetric(self.num_classes, self.ignore_label, name="miou")

    @property
    def metrics(self):
        trackers = list(getattr(self, "loss_trackers", {}).values())
        return trackers + ([self.miou_metric] if hasattr(self, "miou_metric") else [])

    @staticmethod
    def _global_mean(term):
        """(sum, weight) on this replica -> this replica's share of the global mean."""
        loss_sum, weight = term
        weight = tf.cast(tf.stop_gradient(weight), tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            weight = ctx.all_reduce(tf.distribute.ReduceOp.SUM, weight)
        return tf.cast(loss_sum, tf.float32) / tf.maximum(weight, 1.0)

    def compute_loss_terms(self, images, labels, training=True):
        """Returns (total, fused_logits, {name: term}); each value is this replica's
        share of the global-batch mean, so summing over replicas gives the true mean."""
        size = tf.shape(images)[1:3]
        outputs = self._run_train_scales(images, training)
        fused = self._fuse(outputs, size)
        terms = {"fused": self._global_mean(self._loss_fn(labels, fused))}
        total = terms["fused"]
        if self.network_config["aux_head"]:
            terms["aux"] = self._global_mean(self._ce_fn(labels, self._fuse(outputs, size, index=2)))
            total += self.aux_weight * terms["aux"]
        if self.scale_loss_weight and self.fusion != "single":
            for s, o in outputs.items():
                terms[f"scale_{s:g}"] = self._global_mean(self._ce_fn(labels, F.resize(o[0], size)))
                total += self.scale_loss_weight * terms[f"scale_{s:g}"]
        return total, fused, terms

    def _update_trackers(self, total, terms):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Mean trackers average over replicas: scale shares back up so they report the global mean.
        self.loss_trackers["loss"].update_state(total * replicas)
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value * replicas)

    def train_step(self, data):
        images, labels = data
        with tf.GradientTape() as tape:
            total, _, terms = self.compute_loss_terms(images, labels, training=True)
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        grads = _skip_if_any_replica_nonfinite(grads, self.optimizer)
        # weights outside the loss (the attention head in single-scale training) get no update
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        self._update_trackers(total, terms)
        return {n: t.result() for n, t in self.loss_trackers.items()}

    def test_step(self, data):
        images, labels = data
        total, fused, terms = self.compute_loss_terms(images, labels, training=False)
        self._update_trackers(total, terms)
        self.miou_metric.update_state(labels, fused)
        return {m.name: m.result() for m in self.metrics}

    # ------------------------------------------------------------------ freezing
    def set_frozen(self, groups):
        """Freezes the named parts (``trunk``, ``seg_head``, ``attention``); others train."""
        unknown = set(groups) - set(FREEZE_GROUPS)
        if unknown:
            raise ValueError(f"Unknown freeze group(s) {sorted(unknown)}; allowed: {sorted(FREEZE_GROUPS)}")
        prefixes = tuple(p for g in groups for p in FREEZE_GROUPS[g])
        for layer in self.network.layers:
            if layer.weights:
                layer.trainable = not layer.name.startswith(prefixes) if prefixes else True

    # ------------------------------------------------------------------ config
    def build(self, input_shape=None):
        self.built = True  # the segmenter is built in __init__

    def get_config(self):
        config = super().get_config()
        config.update(self.network_config, fusion=self.fusion, train_scales=list(self.train_scales),
                      ignore_label=self.ignore_label)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _skip_if_any_replica_nonfinite(grads, optimizer):
    """Works around Keras 3.15's LossScaleOptimizer deciding finiteness per replica
    (REFERENCE s7): if any replica has a non-finite gradient, every replica gets NaN
    gradients so the loss-scale optimizer skips the step everywhere and lowers the scale."""
    ctx = tf.distribute.get_replica_context()
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or ctx is None \
            or ctx.num_replicas_in_sync == 1:
        return grads
    bad = tf.cast(tf.logical_not(tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])), tf.float32)
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)  # ReduceOp has no MAX: count the bad replicas
    poison = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(0.0))
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
