"""``HMSA``: the Keras model that runs one shared segmenter at several scales.

- ``model(images)`` runs the training scheme of ``fusion`` over ``train_scales``
  (hierarchical 0.5 + 1.0 by default) and returns a dict: the fused ``logits`` at input
  size, the fused ``aux_logits`` (with an auxiliary head) and each scale's ``scale_logits``.
- ``model.segment_chains(images, chains, flip)`` runs several inference chains in one
  pass (each scale of their union once) and returns one result dict per chain;
  ``model.segment(images, scales, flip)`` is the one-chain case.
- The loss ``1.0 L(fused) + aux_weight L(fused aux) + scale_loss_weight sum_s CE(U(L_s))``
  (reference ``network/mscale.py: two_scale_forward``) is :meth:`HMSA.compute_loss`, Keras 3's
  contract, so every backend's own ``fit`` trains the model (JAX included). Under
  TensorFlow, ``train_step``/``test_step`` hand over to
  :mod:`hmsa_keras.training.loop`, which adds what only ``tf.distribute`` needs (a global
  mean over replicas, the all-replica loss-scale skip) and also drives the custom loop.

Every op is ``keras.ops``/``keras.layers``; TensorFlow-only paths are chosen at run time
(:mod:`hmsa_keras.backend`).
"""

from __future__ import annotations

import keras
from keras import ops

from hmsa_keras import backend
from hmsa_keras.config import ATTENTION_BN, FUSIONS
from hmsa_keras.conventions import IGNORE_LABEL, min_size_problem, parse_scales
from hmsa_keras.models import fusion as F
from hmsa_keras.models.segmenter import build_segmenter, resolve_head

FREEZE_GROUPS = {
    "trunk": ("trunk",),
    "seg_head": ("aspp_", "decoder_", "seg_", "aux_", "ocr_", "logits", "aux_logits"),
    "attention": ("attn_", "attention"),
}


def check_images(shape, scales, what="images"):
    """ValueError unless ``shape`` is ``[batch, height, width, 3]`` and, when height and
    width are known, every scale of ``scales`` leaves at least
    :data:`hmsa_keras.conventions.MIN_SIDE` pixels per side."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[-1] not in (3, None):
        raise ValueError(f"{what} must be a [batch, height, width, 3] tensor, got shape {shape}")
    if shape[1] is None or shape[2] is None:
        return
    problem = min_size_problem(int(shape[1]), int(shape[2]), scales)
    if problem:
        raise ValueError(f"{what}: {problem}")


def _key(scale):
    return f"{float(scale):g}"


def local_mean(term):
    """``(loss_sum, weight)`` -> ``loss_sum / max(weight, 1)`` (float32); the weight is a
    count, not differentiated. Under ``tf.distribute`` the training loop uses
    :func:`hmsa_keras.training.loop.global_mean` instead."""
    loss_sum, weight = term
    weight = ops.cast(ops.stop_gradient(weight), "float32")
    return ops.cast(loss_sum, "float32") / ops.maximum(weight, 1.0)


@keras.saving.register_keras_serializable(package="hmsa_keras")
class HMSA(keras.Model):
    """Hierarchical Multi-Scale Attention segmentation model (Tao et al. 2020,
    arXiv 2005.10821, s3; reference ``network/mscale.py``: ``MscaleV3Plus``,
    ``two_scale_forward`` for training, ``nscale_forward`` for inference).

    One single-scale network (:func:`~hmsa_keras.models.segmenter.build_segmenter`: trunk,
    DeepLabV3+ head, attention head) runs at every scale and the outputs are fused.

    Args:
      num_classes: K, int, ``1 <= K <= IGNORE_LABEL`` (255) so that the ignore label stays
        outside ``[0, K)``, the rule of :mod:`hmsa_keras.losses` and
        :mod:`hmsa_keras.metrics`.
      trunk: ``"mobilenetv2"`` (default), ``"resnet50"`` or ``"resnet101"``
        (``keras.applications``, made atrous; :func:`~hmsa_keras.models.trunks.build_trunk`).
      alpha: MobileNetV2 width multiplier (float > 0, default 1.0; ignored by ResNets).
      output_stride: 16 (default) or 8, the trunk's final stride; ASPP rates (6, 12, 18)
        at 16, (12, 24, 36) at 8.
      weights: trunk initialisation: ``None`` (random, default), ``"imagenet"``
        (downloads) or the path of a ``keras.applications`` weights file.
      bn_momentum: BatchNorm momentum in Keras' convention (default 0.9 = PyTorch 0.1).
      sync_bn: synchronized BatchNorm across replicas (default False).
      aspp_channels, decoder_channels: widths of ASPP and of the segmentation head
        (default 256, reference ``network/deepv3.py: DeepV3Plus``).
      low_level_channels: projection of the stride-4 features in the decoder (default 48).
      attention_head: ``"conv"`` (default; reference ``network/utils.py: make_attn_head``)
        or ``"deconv"`` (transposed convolutions on the trunk features).
      attention_channels: width of the conv attention head (default 256).
      aux_head: adds the auxiliary head on the trunk features (default False); its fused
        output is trained with weight ``aux_weight`` (see :meth:`compile`).
      dropout: dropout rate after ASPP (default 0.0).
      fusion: how scales combine: ``"hierarchical"`` (default, the paper's chain),
        ``"explicit"`` (Chen et al. 2016 softmax over scales), ``"mean"``, ``"max"`` or
        ``"single"`` (scale 1.0 only); see :mod:`hmsa_keras.models.fusion`.
      train_scales: the scales of the training forward pass (default ``(0.5, 1.0)``,
        reference ``MSCALE_LO_SCALE`` 0.5 with 1.0), parsed by
        :func:`hmsa_keras.conventions.parse_scales` (finite, > 0, distinct; sorted);
        ``(1.0,)`` whatever is given when ``fusion="single"``.
      attention_bn: where the attention head runs in training. ``"all_scales"`` (default,
        the reference's ``network/mscale.py: two_scale_forward``, whose ``_fwd`` computes the
        attention at every scale): the head runs at every training scale, so its BatchNorm
        moving statistics average the features of every scale, including the 1.0x ones the
        inference chain 0.5,1.0,2.0 reads; the attention the fusion does not read contributes
        no gradient. ``"fused_scales"``: only at the scales whose attention the fusion reads
        (:func:`hmsa_keras.models.fusion.attention_scales`), which saves the head's forward
        pass at the largest scale. No effect with ``fusion="single"`` (no attention).
      head: ``"deeplabv3plus"`` or ``"ocr"``; default None: the trunk's own (``"ocr"`` for
        ``"hrnetv2_w48"``, reference ``network/ocrnet.py: HRNet_Mscale``; DeepLabV3+ otherwise).
        The OCR head always has its auxiliary output (its soft object regions).
      hrnet_width: HRNetV2 width, channels of the highest-resolution branch (default 48 = W48;
        :mod:`hmsa_keras.models.hrnet`).
      ocr_mid_channels, ocr_key_channels, ocr_dropout: the OCR head (defaults 512, 256, 0.05,
        reference ``MODEL.OCR.MID_CHANNELS``/``KEY_CHANNELS``; :mod:`hmsa_keras.models.ocr`).
      **kwargs: ``keras.Model`` arguments (``name``, ``dtype``, ``trainable``).

    Inputs are normalised float32 images ``[B, H, W, 3]`` (``(pixel / 255 - MEAN) / STD``,
    :mod:`hmsa_keras.conventions`); every output is float32, also under mixed precision.

    Raises:
      ValueError: an argument outside the values above (the message names the argument and
        what is allowed); a trunk weights file that is missing or does not fit.
    """

    def __init__(
        self,
        num_classes,
        trunk="mobilenetv2",
        alpha=1.0,
        output_stride=16,
        weights=None,
        bn_momentum=0.9,
        sync_bn=False,
        aspp_channels=256,
        decoder_channels=256,
        low_level_channels=48,
        attention_head="conv",
        attention_channels=256,
        aux_head=False,
        dropout=0.0,
        fusion="hierarchical",
        train_scales=(0.5, 1.0),
        head=None,
        hrnet_width=48,
        ocr_mid_channels=512,
        ocr_key_channels=256,
        ocr_dropout=0.05,
        attention_bn="all_scales",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if attention_bn not in ATTENTION_BN:
            raise ValueError(f"attention_bn must be one of {ATTENTION_BN}, got {attention_bn!r}")
        if isinstance(num_classes, int) and num_classes > IGNORE_LABEL:
            raise ValueError(
                f"num_classes must be at most {IGNORE_LABEL} (the ignore label "
                f"must lie outside [0, num_classes)), got {num_classes}"
            )
        self.network_config = dict(
            num_classes=num_classes,
            trunk=trunk,
            alpha=alpha,
            output_stride=output_stride,
            weights=weights,
            bn_momentum=bn_momentum,
            sync_bn=sync_bn,
            aspp_channels=aspp_channels,
            decoder_channels=decoder_channels,
            low_level_channels=low_level_channels,
            attention_head=attention_head,
            attention_channels=attention_channels,
            aux_head=aux_head,
            dropout=dropout,
        )
        head = resolve_head(trunk, head)
        self.network_config.update(
            dict(
                head=head,
                hrnet_width=hrnet_width,
                ocr_mid_channels=ocr_mid_channels,
                ocr_key_channels=ocr_key_channels,
                ocr_dropout=ocr_dropout,
            )
        )
        if (
            head == "ocr"
        ):  # OCR's soft object regions are its auxiliary output (reference ocrnet.py)
            self.network_config["aux_head"] = True
        self.train_scales = (
            (1.0,) if fusion == "single" else parse_scales(train_scales, "train_scales")
        )
        self.network = build_segmenter(**self.network_config)
        self.num_classes = num_classes
        self.fusion = fusion
        self.attention_bn = attention_bn
        self._loss_fn = None
        self._last_loss_training = True
        self.built = True  # every weight exists once the segmenter is built

    # ------------------------------------------------------------------ forward
    def run_scales(self, images, scales, training=False, attention=None):
        """Runs the segmenter at each scale: {scale: (logits, attention, aux or None)},
        each ``[B, h_s, w_s, .]`` float32 at ``(floor(H s), floor(W s))``.

        ``attention``: the scales whose attention is needed (default all). At the others the
        attention head does not run and ``None`` stands in its place; in training that saves
        its forward pass, which BatchNorm's moving-statistics updates would otherwise keep alive.
        """
        check_images(images.shape, scales)
        outputs = {}
        for s in scales:
            x = images if s == 1.0 else F.resize(images, F.scaled_size(images, s))
            if attention is None or s in attention:
                net = self.network
            else:
                net = self._network_without_attention()
            out = net(x, training=training)
            outputs[s] = (out["logits"], out.get("attention"), out.get("aux_logits"))
        return outputs

    def _attention_run_scales(self, training):
        """The scales at which the forward pass runs the attention head (see ``attention_bn``):
        every training scale in training with ``"all_scales"`` (for the BatchNorm statistics;
        the unread outputs are simply not used, so they take no gradient), else only those the
        fusion reads."""
        read = F.attention_scales(self.fusion, self.train_scales)
        if training and read and self.attention_bn == "all_scales":
            return tuple(self.train_scales)
        return read

    def _network_without_attention(self):
        """The segmenter minus its attention head: same layers and weights, not tracked twice."""
        cached = self.__dict__.get("_without_attention")
        if cached is None or cached[0] is not self.network:
            outputs = {k: v for k, v in self.network.output.items() if k != "attention"}
            view = keras.Model(
                self.network.input,
                outputs,
                name="segmenter_without_attention",
                dtype=self.network.dtype_policy,
            )
            # object.__setattr__ bypasses Keras' tracking: the view adds no weights
            object.__setattr__(self, "_without_attention", (self.network, view))
        return self.__dict__["_without_attention"][1]

    def _fuse(self, outputs, size, fusion=None, index=0):
        pairs = {s: (o[index], o[1]) for s, o in outputs.items()}
        return F.fuse(pairs, fusion or self.fusion, size)

    def call(self, images, training=False):
        """The training forward pass over ``train_scales`` (attention only where ``fusion``
        reads it). ``images``: ``[B, H, W, 3]`` float32, normalised. Returns a dict:

        - ``logits``: ``[B, H, W, K]`` fused logits at input size;
        - ``aux_logits``: ``[B, H, W, K]`` fused auxiliary logits (only with ``aux_head``);
        - ``scale_logits``: ``{"0.5": [B, h, w, K], "1": ...}`` each train scale's logits at
          that scale's size (keys ``f"{scale:g}"``).
        """
        outputs = self.run_scales(
            images, self.train_scales, training, self._attention_run_scales(training)
        )
        size = F.spatial_size(images)
        result = {"logits": self._fuse(outputs, size)}
        if self.network_config["aux_head"]:
            result["aux_logits"] = self._fuse(outputs, size, index=2)
        result["scale_logits"] = {_key(s): o[0] for s, o in outputs.items()}
        return result

    def segment_chains(self, images, chains, flip=False, fusion=None, return_details=False):
        """Inference with several scale chains in one pass: each scale of the union of
        ``chains`` runs once (twice with ``flip``), and every chain is fused from those outputs.

        Args:
          images: ``[B, H, W, 3]`` float32, normalised (dynamic H, W under TensorFlow).
          chains: a sequence of scale chains, e.g. ``[(1.0,), (0.5, 1.0, 2.0)]``; each is
            parsed by :func:`hmsa_keras.conventions.parse_scales`.
          flip: also run the horizontally flipped image and average the fused logits
            (flip test-time augmentation).
          fusion: overrides the model's ``fusion`` for inference.
          return_details: adds each chain's per-scale logits and attention.
        Returns:
          one dict per chain, in order: ``logits`` ``[B, H, W, K]`` float32 (fused, input
          size), ``classes`` ``[B, H, W]`` int32 and, with ``return_details``,
          ``scale_logits`` ``{scale: [B, H, W, K]}`` and ``attention`` ``{scale: [B, H, W, 1]}``
          (sigmoid), resized to the input size (of the unflipped image).
        Raises:
          ValueError: no chain, a bad chain, an unknown fusion, images of the wrong rank or
            too small at some scale (:func:`check_images`).
        """
        if isinstance(chains, (str, int, float)) or not len(chains):
            raise ValueError(
                f"chains: expected a list of scale chains, e.g. [(1.0,), (0.5, 1.0)], "
                f"got {chains!r}"
            )
        chains = [parse_scales(c, "scales") for c in chains]
        fusion = fusion or self.fusion
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        images = ops.convert_to_tensor(images)
        union = tuple(sorted({s for c in chains for s in c}))
        attention = (
            None
            if return_details
            else tuple(sorted({s for c in chains for s in F.attention_scales(fusion, c)}))
        )
        size = F.spatial_size(images)
        outputs = self.run_scales(images, union, attention=attention)
        mirrored = None
        if flip:
            mirrored = self.run_scales(ops.flip(images, axis=2), union, attention=attention)
        results, resized = [], {}
        for chain in chains:
            logits = F.fuse_chain(outputs, chain, fusion, size, mirrored)
            result = {"logits": logits, "classes": F.argmax_classes(logits)}
            if return_details:
                for s in chain:
                    if s not in resized:
                        resized[s] = (F.resize(outputs[s][0], size), F.resize(outputs[s][1], size))
                result["scale_logits"] = {s: resized[s][0] for s in chain}
                result["attention"] = {s: resized[s][1] for s in chain}
            results.append(result)
        return results

    def segment(
        self, images, scales=(0.5, 1.0, 2.0), flip=False, fusion=None, return_details=False
    ):
        """Inference with one scale chain: ``segment_chains(images, [scales], ...)[0]``."""
        return self.segment_chains(images, [scales], flip, fusion, return_details)[0]

    # ------------------------------------------------------------------ loss
    def compile(
        self,
        optimizer="sgd",
        loss="ce",
        aux_weight=0.4,
        scale_loss_weight=0.05,
        class_weights=None,
        **kwargs,
    ):
        """Sets the optimizer and the loss.

        Args:
          optimizer: a ``keras.optimizers`` optimizer or its name.
          loss: ``"ce"`` or ``"rmi"`` (:func:`hmsa_keras.losses.get_loss`), or a callable
            ``(labels, logits) -> (loss_sum, weight)``, applied to the fused logits.
          aux_weight: weight of the cross-entropy of the fused auxiliary logits (default
            0.4, reference ``config.py: LOSS.OCR_ALPHA``); used with ``aux_head``.
          scale_loss_weight: weight of each train scale's own cross-entropy at input size
            (reference ``LOSS.SUPERVISED_MSCALE_WT``, default 0.05 here); 0 turns them off.
          class_weights: optional K per-class weights for every term.
          **kwargs: ``keras.Model.compile`` arguments (e.g. ``jit_compile``,
            ``steps_per_execution``); ``metrics`` and a Keras ``loss`` are not used.
        """
        from hmsa_keras import losses, metrics

        super().compile(optimizer=optimizer, **kwargs)
        if not callable(loss):
            loss = losses.get_loss(loss, class_weights=class_weights)
        self._loss_fn = loss
        self._ce_fn = losses.get_loss("ce", class_weights=class_weights)
        self.aux_weight = aux_weight
        self.scale_loss_weight = scale_loss_weight
        names = ["loss", "fused"] + (["aux"] if self.network_config["aux_head"] else [])
        if self._has_scale_terms():
            names += [f"scale_{_key(s)}" for s in self.train_scales]
        self.loss_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.miou_metric = metrics.ConfusionMatrixMetric(self.num_classes, name="miou")

    def _has_scale_terms(self):
        return bool(self.scale_loss_weight) and self.fusion != "single"

    @property
    def metrics(self):
        trackers = list(getattr(self, "loss_trackers", {}).values())
        return trackers + ([self.miou_metric] if hasattr(self, "miou_metric") else [])

    def loss_terms(self, labels, y_pred):
        """The unnormalised terms of the loss: ``{name: (loss_sum, weight)}`` with names
        ``fused``, ``aux`` (with ``aux_head``) and ``scale_<s>`` (each train scale's logits
        resized to the input size; unless ``scale_loss_weight`` is 0 or fusion is single).

        ``labels``: ``[B, H, W]`` int (labels outside ``[0, K)`` ignored); ``y_pred``: the
        dict returned by :meth:`call`. Raises RuntimeError before :meth:`compile`.
        """
        if self._loss_fn is None:
            raise RuntimeError("HMSA: call compile() before computing the loss")
        terms = {"fused": self._loss_fn(labels, y_pred["logits"])}
        if self.network_config["aux_head"]:
            terms["aux"] = self._ce_fn(labels, y_pred["aux_logits"])
        if self._has_scale_terms():
            size = F.spatial_size(y_pred["logits"])
            for s in self.train_scales:
                logits = F.resize(y_pred["scale_logits"][_key(s)], size)
                terms[f"scale_{_key(s)}"] = self._ce_fn(labels, logits)
        return terms

    def total_loss(self, means):
        """``fused + aux_weight * aux + scale_loss_weight * sum_s scale_s`` of normalised terms."""
        total = means["fused"]
        if "aux" in means:
            total += self.aux_weight * means["aux"]
        for name, value in means.items():
            if name.startswith("scale_"):
                total += self.scale_loss_weight * value
        return total

    def compute_loss_terms(self, images, labels, training=True, reduce=local_mean):
        """Forward pass and loss: returns ``(total, fused_logits, {name: normalised term})``.

        ``reduce`` turns each ``(loss_sum, weight)`` into a number: :func:`local_mean` by
        default; the TensorFlow loop passes a global mean over replicas.
        """
        y_pred = self.call(images, training=training)
        means = {n: reduce(t) for n, t in self.loss_terms(labels, y_pred).items()}
        return self.total_loss(means), y_pred["logits"], means

    def update_loss_trackers(self, total, means, replicas=1):
        """Adds one step to the running means. ``replicas``: under ``tf.distribute`` each
        replica holds its share of the global mean and the trackers average over replicas,
        so the shares are scaled back up."""
        self.loss_trackers["loss"].update_state(total * replicas)
        for name, value in means.items():
            self.loss_trackers[name].update_state(value * replicas)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras 3's loss contract (used by ``fit``/``evaluate`` on JAX and other backends):
        the total of :meth:`loss_terms` with each term a mean over this batch's valid pixels
        (or images, for RMI). Updates the ``loss``/term trackers and, when not training,
        the mIoU metric. ``sample_weight`` is not supported (ValueError)."""
        del x
        if sample_weight is not None:
            raise ValueError(
                "HMSA.compute_loss: sample_weight is not supported; weight classes "
                "with compile(class_weights=...)"
            )
        means = {n: local_mean(t) for n, t in self.loss_terms(y, y_pred).items()}
        total = self.total_loss(means)
        self.update_loss_trackers(total, means)
        if not training:
            self.miou_metric.update_state(y, y_pred["logits"])
        self._last_loss_training = bool(training)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The loss trackers (updated in :meth:`compute_loss`), plus ``miou`` in evaluation."""
        logs = {name: t.result() for name, t in self.loss_trackers.items()}
        if not self._last_loss_training:
            logs["miou"] = self.miou_metric.result()
        return logs

    def train_step(self, *args, **kwargs):
        if backend.is_tensorflow():
            from hmsa_keras.training import loop

            return loop.train_step(self, *args, **kwargs)
        return super().train_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        if backend.is_tensorflow():
            from hmsa_keras.training import loop

            return loop.test_step(self, *args, **kwargs)
        return super().test_step(*args, **kwargs)

    # ------------------------------------------------------------------ freezing
    def set_frozen(self, groups):
        """Freezes the named parts (``trunk``, ``seg_head``, ``attention``); others train."""
        unknown = set(groups) - set(FREEZE_GROUPS)
        if unknown:
            raise ValueError(
                f"Unknown freeze group(s) {sorted(unknown)}; allowed: {sorted(FREEZE_GROUPS)}"
            )
        prefixes = tuple(p for g in groups for p in FREEZE_GROUPS[g])
        for layer in self.network.layers:
            if layer.weights:
                layer.trainable = not layer.name.startswith(prefixes) if prefixes else True

    # ------------------------------------------------------------------ config
    def build(self, input_shape=None):
        self.built = True  # the segmenter is built in __init__

    def get_config(self):
        config = super().get_config()
        config.update(
            self.network_config,
            fusion=self.fusion,
            train_scales=list(self.train_scales),
            attention_bn=self.attention_bn,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Saved before the losses and metrics dropped it (they always ignored labels outside
        # [0, K), whatever its value): nothing to restore.
        config.pop("ignore_label", None)
        return cls(**config)
