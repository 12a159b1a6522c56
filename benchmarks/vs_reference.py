"""hmsa_keras against the PyTorch reference on the same CPU: training step and inference.

    python benchmarks/vs_reference.py --reference_dir=/path/to/semantic-segmentation
        [--torch_python=/work/venv-torch/bin/python] [--parts=train,infer] [--bf16]
        [--backends=keras,saved_model,tflite] [--rounds=3] [--threads=0] [--quick]
        [--train_size=256x512] [--train_batch=2] [--infer_size=512x1024] [--out_dir=DIR]
        [--model=deeplab_r50|hrnet_ocr]

The reference is NVIDIA/semantic-segmentation (the comparison in docs/benchmarks.md used
commit 7726b144c2cc0b8e09c67eabb78f027efdf3f0fa), built from the checkout given by
``--reference_dir`` without editing its files: its CUDA/apex/runx-only imports are replaced
at run time by plain-PyTorch stand-ins in ``sys.modules`` (``apex.amp.float_function`` ->
identity, ``apex.parallel.SyncBatchNorm`` -> ``nn.BatchNorm2d``, ``runx.logx`` -> silent,
``utils.misc.fmt_scale`` re-implemented, ``network/Resnet.py: resnet50`` called with
``pretrained=False`` so nothing downloads), and its global ``cfg`` is set by this script
(``BNFUNC = nn.BatchNorm2d``, ``MSCALE_LO_SCALE = 0.5``, ``SUPERVISED_MSCALE_WT = 0.05``,
``N_SCALES`` = the inference chain). Model: ``network/mscale.py: DeepV3R50`` (ResNet-50,
output stride 8, DeepLabV3+ head, attention head), 19 classes, random weights.

Ours: ``hmsa_keras.build_model(num_classes=19, trunk="resnet50", output_stride=8,
aux_head=False)`` (DeepV3R50 has no auxiliary head), random weights.

``--model=hrnet_ocr`` compares the paper's flagship network instead: reference
``network/ocrnet.py: HRNet_Mscale`` (``MscaleOCR``: HRNetV2-W48 trunk, ``cfg.MODEL.OCR_EXTRA``
as shipped, OCR head 512/256, attention head 256; ``cfg.MODEL.HRNET_CHECKPOINT`` emptied so
``init_weights`` loads no ImageNet file; ``cfg.LOSS.OCR_ALPHA`` 0.4 as shipped) against
``hmsa_keras.build_model(num_classes=19, trunk="hrnetv2_w48")`` (OCR head, its auxiliary
output always on) compiled with ``aux_weight=0.4``. Training: the reference's
``two_scale_forward`` loss ``0.4 CE(fused aux) + CE(fused) + 0.05 (CE(U(L_0.5)) + CE(L_1.0))``,
ours the same terms; batch 1 by default (HRNet-OCR has no image-pooling BatchNorm).
Inference chain 0.5,1.0 (reference ``N_SCALES``). PyTorch runs with
``torch.set_flush_denormal(True)`` for this model: the reference's ``init_weights`` (trunk
convolutions ~ N(0, 0.001), meant to be overwritten by ImageNet weights) drives activations
into float32 denormals, several times slower on x86, which TensorFlow's thread pools flush to
zero anyway. The DeepLab defaults are unchanged.

Two worker processes, one per framework (PyTorch runs under ``--torch_python``, e.g. a
separate venv; ours under the Python running this script, which must import hmsa_keras and
TensorFlow), driven by this script over pipes. They never run at the same time: every round
asks each variant for one timed call, in an order rotated round by round, after warm-up
calls (the first traces / allocates). Reported: medians, per-round times, ratios of medians
ours / reference, both frameworks' thread settings and the CPU's SIMD flags.

Parts (``--parts``):

  train   one two-scale training step, ResNet-50 OS8, ``--train_size`` (256x512), batch
          ``--train_batch`` (2), SGD momentum 0.9, weight decay 1e-4 (coupled, as
          ``torch.optim.SGD``). Reference: ``model.train()``, ``loss = model({"images",
          "gts"})`` (``two_scale_forward``: criterion of the fused logits + 0.05 x
          criterion of each scale's logits, all at input size), ``loss.backward()``,
          ``optimizer.step()``; criterion ``loss/utils.py: CrossEntropyLoss2d`` (the
          reference's RMI loss needs CUDA: ``torch.cuda.DoubleTensor``). Ours: the step the
          trainer runs (:func:`hmsa_keras.training.loop.compile_train_step`), loss ``ce``,
          ``scale_loss_weight=0.05``: the same three terms.
  infer   the chain 0.5,1.0,2.0 at ``--infer_size`` (512x1024), batch 1, no gradients, up
          to the class map. Reference: ``model.eval()``, ``torch.inference_mode()``,
          ``nscale_forward`` then argmax. Ours (``--backends``): ``keras`` =
          ``model.segment`` compiled (:func:`hmsa_keras.inference.compiled_segment`) on a
          normalised float32 batch; ``saved_model`` = :func:`hmsa_keras.export.export_saved_model`
          reloaded, ``serving_default`` on uint8; ``tflite`` = the float32 TFLite file at the
          fixed size (:func:`hmsa_keras.export.tflite.convert`), ai_edge_litert, 2 threads.

``--bf16`` adds, to the same rounds, bfloat16 variants where both sides support them:
PyTorch CPU autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``, forward and loss
inside, backward outside, as PyTorch documents) and our ``mixed_bfloat16`` policy (a second
model built under it; the Keras inference path only: SavedModel/TFLite exports are float32).

``--quick``: 64x128 training crops and inference, one round, one warm-up: a smoke run
of the harness for a developer (the test suite does not run it: it needs PyTorch). Writes
``vs_reference.json`` (``--out_dir``, default benchmarks/results; a temporary directory with
``--quick``). Last line: ``RESULT_JSON <path>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402  (standard library only at import time)

NUM_CLASSES = 19
IGNORE = 255
CHAIN = (0.5, 1.0, 2.0)
MODELS = {  # --model: the reference's network, our build_model arguments, inference chain, batch
    "deeplab_r50": dict(
        reference="network/mscale.py: DeepV3R50",
        chain=CHAIN,
        train_batch=2,
        ours=dict(trunk="resnet50", output_stride=8, aux_head=False),
    ),
    "hrnet_ocr": dict(
        reference="network/ocrnet.py: HRNet_Mscale",
        chain=(0.5, 1.0),
        train_batch=1,
        ours=dict(trunk="hrnetv2_w48"),
    ),
}
OCR_ALPHA = 0.4  # reference cfg.LOSS.OCR_ALPHA: weight of the fused auxiliary (soft region) loss
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
SCALE_LOSS_WEIGHT = 0.05
REPLY = "@@VSREF "
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
)


# ============================================================================ shared helpers
def parse_hw(text):
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def data(batch, height, width, seed=1):
    """The same normalised float32 images [B, H, W, 3] and int labels [B, H, W] in both
    workers (NumPy, seeded); 5% of the labels are the ignore label."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    images = ((pixels / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, height, width)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.05] = IGNORE
    return pixels, images, labels


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return {flag: flag in have for flag in SIMD_FLAGS}
    except OSError:
        pass
    return {}


def vm_hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# ============================================================================ reference worker
def install_reference_stand_ins(reference_dir):
    """Plain-PyTorch stand-ins for the reference's CUDA/apex/runx-only imports (those of the
    golden generator, ``tests/goldens/make_hrnet_ocr_golden.py: install_stand_ins``) and the
    reference on ``sys.path``."""
    sys.path.insert(0, str(REPO))
    from tests.goldens.make_hrnet_ocr_golden import install_stand_ins

    install_stand_ins()
    sys.path.insert(0, os.path.abspath(reference_dir))


def reference_model(reference_dir, chain, model="deeplab_r50"):
    """``network/mscale.py: DeepV3R50`` (or, ``model="hrnet_ocr"``, ``network/ocrnet.py:
    HRNet_Mscale``) with ``loss/utils.py: CrossEntropyLoss2d``."""
    import torch
    import torch.nn as nn

    install_reference_stand_ins(reference_dir)
    from config import cfg

    cfg.MODEL.BNFUNC = nn.BatchNorm2d
    cfg.OPTIONS.TORCH_VERSION = float(".".join(torch.__version__.split(".")[:2]))
    cfg.DATASET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.MSCALE_LO_SCALE = 0.5
    cfg.LOSS.SUPERVISED_MSCALE_WT = SCALE_LOSS_WEIGHT
    cfg.MODEL.N_SCALES = list(chain)  # used by forward() in eval mode only
    if model == "hrnet_ocr":
        cfg.MODEL.HRNET_CHECKPOINT = ""  # init_weights: random weights, no ImageNet file
        cfg.LOSS.OCR_ALPHA = OCR_ALPHA
        from loss.utils import CrossEntropyLoss2d
        from network import ocrnet

        torch.manual_seed(0)
        return ocrnet.HRNet_Mscale(NUM_CLASSES, criterion=CrossEntropyLoss2d(ignore_index=IGNORE))
    import network.Resnet as resnet

    build = resnet.resnet50
    resnet.resnet50 = lambda pretrained=True, **kw: build(pretrained=False, **kw)  # no download
    from loss.utils import CrossEntropyLoss2d
    from network import mscale

    torch.manual_seed(0)
    return mscale.DeepV3R50(NUM_CLASSES, criterion=CrossEntropyLoss2d(ignore_index=IGNORE))


class TorchWorker:
    def __init__(self, opts):
        import torch

        self.torch = torch
        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        if opts.get("model") == "hrnet_ocr":
            # HRNet's init_weights draws trunk convolutions with std 0.001: without ImageNet
            # weights the eval-mode activations (and some gradients) shrink into float32
            # denormals, which run many times slower on x86 (64x128 forward: 22 s vs 1.2 s).
            # TensorFlow's thread pools flush denormals to zero; PyTorch does when asked.
            torch.set_flush_denormal(True)
        self.opts = opts
        self.model = reference_model(opts["reference_dir"], opts["chain"], opts["model"])
        self.runners = {}

    def info(self):
        torch = self.torch
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "flush_denormal": self.opts.get("model") == "hrnet_ocr",
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_bf16_supported": bool(
                getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()
            ),
            "parameters": n_params,
            "python": platform.python_version(),
            "reference_dir": self.opts["reference_dir"],
        }

    def setup(self, part, variants):
        for variant in variants:
            bf16 = variant.endswith("bf16")
            if part == "train":
                self.runners[variant] = self._train_runner(bf16)
            else:
                self.runners[variant] = self._infer_runner(bf16)
        return {}

    def _autocast(self, bf16):
        import contextlib

        return (
            self.torch.autocast("cpu", dtype=self.torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )

    def _train_runner(self, bf16):
        torch = self.torch
        h, w = self.opts["train_size"]
        _, images, labels = data(self.opts["train_batch"], h, w)
        inputs = {
            "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            "gts": torch.from_numpy(labels),
        }
        model = self.model
        # torch.optim.SGD: weight decay added to the gradient before momentum (coupled)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )

        def run():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with self._autocast(bf16):
                loss = model(inputs)
            loss.backward()
            optimizer.step()
            return float(loss)

        return run

    def _infer_runner(self, bf16):
        torch = self.torch
        h, w = self.opts["infer_size"]
        _, images, _ = data(1, h, w, seed=2)
        x = {"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()}
        model = self.model

        def run():
            model.eval()
            with torch.inference_mode(), self._autocast(bf16):
                pred = model(x)["pred"]  # forward() -> nscale_forward(inputs, cfg.MODEL.N_SCALES)
                classes = pred.argmax(1)
            return float(classes.float().mean())

        return run

    def release(self):
        self.runners.clear()
        import gc

        gc.collect()

    def flops(self, part):
        """Forward+backward (train) or forward (infer) FLOPs of matmuls and convolutions
        (``torch.utils.flop_counter.FlopCounterMode``) at the benchmark's static shape."""
        torch = self.torch
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        if part == "train":
            h, w = self.opts["train_size"]
            _, images, labels = data(self.opts["train_batch"], h, w)
            inputs = {
                "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                "gts": torch.from_numpy(labels),
            }
            self.model.train()
            with counter:
                self.model(inputs).backward()
            self.model.zero_grad(set_to_none=True)
        else:
            h, w = self.opts["infer_size"]
            _, images, _ = data(1, h, w, seed=2)
            self.model.eval()
            with counter, torch.inference_mode():
                self.model({"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()})
        return counter.get_total_flops()


# ============================================================================ our worker
class OursWorker:
    def __init__(self, opts):
        sys.path.insert(0, str(REPO))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if opts["threads"]:
            tf.config.threading.set_intra_op_parallelism_threads(opts["threads"])
            tf.config.threading.set_inter_op_parallelism_threads(opts["threads"])
        self.tf = tf
        self.opts = opts
        self.models = {}
        self.runners = {}
        self.work_dir = tempfile.mkdtemp(prefix="hmsa_vs_reference_")

    def model(self, precision, ablation=None):
        import keras

        import hmsa_keras

        key = precision if ablation is None else (precision, ablation)
        if key not in self.models:
            previous = keras.mixed_precision.global_policy().name
            keras.mixed_precision.set_global_policy(precision)
            try:
                keras.utils.set_random_seed(0)
                self.models[key] = hmsa_keras.build_model(
                    num_classes=NUM_CLASSES, **MODELS[self.opts["model"]]["ours"]
                )
            finally:
                keras.mixed_precision.set_global_policy(previous)
        return self.models[key]

    def info(self):
        import keras

        import hmsa_keras.training.loop as loop

        tf = self.tf
        model = self.model("float32")
        return {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
            "train_step_options": loop.train_step_options(),
            "parameters": int(
                sum(int(v.numpy().size) for v in model.weights if "moving" not in v.path)
            ),
            "python": platform.python_version(),
        }

    def setup(self, part, variants):
        extra = {}
        for variant in variants:
            tic = time.perf_counter()
            name, _, ablation = variant.partition("@")
            ablation = ablation or None
            precision = "mixed_bfloat16" if name.endswith("bf16") else "float32"
            with ablation_context(ablation):  # exports trace at set-up
                if part == "train":
                    run = self._train_runner(precision, ablation)
                else:
                    backend = name.split("_", 1)[1].rsplit("_", 1)[0]  # ours_<backend>_<precision>
                    run, extra[variant] = self._infer_runner(backend, precision, ablation)
            self.runners[variant] = with_ablation(run, ablation)
            extra.setdefault(variant, {})["build_seconds"] = time.perf_counter() - tic
        return extra

    def _train_runner(self, precision, ablation=None):
        import keras

        from hmsa_keras.training import loop
        from hmsa_keras.training.optimizer import build_optimizer

        tf = self.tf
        model = self.model(precision, ablation)
        model.compile(
            optimizer=build_optimizer(
                model,
                LR,
                total_steps=10**6,
                momentum=MOMENTUM,
                weight_decay=WEIGHT_DECAY,
                weight_decay_mode="coupled",
            ),
            loss="ce",
            aux_weight=OCR_ALPHA,
            scale_loss_weight=SCALE_LOSS_WEIGHT,
        )
        model.optimizer.build(model.trainable_variables)
        h, w = self.opts["train_size"]
        _, images, labels = data(self.opts["train_batch"], h, w)
        batch = (tf.constant(images), tf.constant(labels.astype("int32")))
        step = loop.compile_train_step(model)
        del keras
        return lambda: float(step(batch)["loss"])  # float() waits for the step

    def _infer_runner(self, backend, precision, ablation=None):
        tf = self.tf
        import numpy as np

        model = self.model(precision, ablation)
        h, w = self.opts["infer_size"]
        pixels, images, _ = data(1, h, w, seed=2)
        if backend == "keras":
            from hmsa_keras.inference import compiled_segment

            fn = compiled_segment(model, self.opts["chain"])
            x = tf.constant(images)
            return (lambda: float(np.mean(fn(x)["classes"].numpy()))), {}
        if backend == "saved_model":
            from hmsa_keras.export import export_saved_model

            path = os.path.join(self.work_dir, f"saved_model_{precision}_{ablation}")
            export_saved_model(model, path, scales=self.opts["chain"])
            fn = tf.saved_model.load(path).signatures["serving_default"]
            x = tf.constant(pixels)
            return (lambda: float(np.mean(fn(images=x)["classes"].numpy()))), {}
        if backend == "tflite":
            from hmsa_keras.export import tflite
            from hmsa_keras.export.saved_model import HMSAExportModule, as_float32

            flat = tflite.convert(
                HMSAExportModule(as_float32(model), self.opts["chain"], False),
                "float32",
                fixed_size=(h, w),
            )
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:  # pragma: no cover
                Interpreter = tf.lite.Interpreter
            interp = Interpreter(model_content=flat, num_threads=self.opts["threads"] or 2)
            interp.allocate_tensors()
            inp = interp.get_input_details()[0]
            outs = {d["name"]: d["index"] for d in interp.get_output_details()}
            out_index = next((i for n, i in outs.items() if "classes" in n), list(outs.values())[0])

            def run():
                interp.set_tensor(inp["index"], pixels)
                interp.invoke()
                return float(np.mean(interp.get_tensor(out_index)))

            return run, {"tflite_bytes": len(flat)}
        raise ValueError(f"unknown backend {backend!r}")

    def release(self):
        import gc

        self.runners.clear()
        gc.collect()

    def flops(self, part):
        """Matmul and convolution FLOPs (forward, and the convolution gradients counted like
        their forward convolution) of the graph that is timed, float32 model."""
        tf = self.tf
        model = self.model("float32")
        if part == "train":
            from hmsa_keras.training import loop

            h, w = self.opts["train_size"]
            b = self.opts["train_batch"]
            if getattr(model, "optimizer", None) is None:
                self._train_runner("float32")
            fn = tf.function(model.train_step)
            specs = ((tf.TensorSpec([b, h, w, 3], tf.float32), tf.TensorSpec([b, h, w], tf.int32)),)
            del loop
        else:
            h, w = self.opts["infer_size"]
            fn = tf.function(lambda x: model.segment(x, self.opts["chain"])["classes"])
            specs = (tf.TensorSpec([1, h, w, 3], tf.float32),)
        return common.graph_flops(fn.get_concrete_function(*specs), op_types=common.DENSE_OPS)


# Ablations (``--ablations``): our step or inference with one speed-up turned off, as an
# extra variant ``ours_..._fp32@<name>`` timed in the same rounds. Each is a context manager
# active while the variant is traced and run.
def _portable_dilation():
    import contextlib

    from hmsa_keras.models import tf_ops

    @contextlib.contextmanager
    def switch():
        saved = list(tf_ops._NATIVE_DILATION)
        tf_ops._NATIVE_DILATION[:] = [False]
        try:
            yield
        finally:
            tf_ops._NATIVE_DILATION[:] = saved

    return switch()


def _xla():
    import contextlib

    from hmsa_keras.training import loop

    @contextlib.contextmanager
    def switch():
        saved = dict(loop.TRAIN_STEP_OPTIONS)
        loop.TRAIN_STEP_OPTIONS["jit_compile"] = True
        try:
            yield
        finally:
            loop.TRAIN_STEP_OPTIONS.clear()
            loop.TRAIN_STEP_OPTIONS.update(saved)

    return switch()


ABLATIONS = {
    "xla": _xla,  # train step compiled with jit_compile=True (XLA); not an ablation, an option
    # dilated convolutions through SpaceToBatch (before issue 17)
    "s2b_dilation": _portable_dilation,
}


def ablation_context(ablation):
    import contextlib

    if ablation is None:
        return contextlib.nullcontext()
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
    return ABLATIONS[ablation]()


def with_ablation(run, ablation):
    if ablation is None:
        return run

    def ablated():
        with ablation_context(ablation):
            return run()

    return ablated


def worker_main(kind, opts):
    """Reads JSON commands on stdin, answers on the original stdout (library output is sent
    to stderr so that it cannot be mistaken for an answer)."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(reply_fd, "w", buffering=1)
    try:
        worker = TorchWorker(opts) if kind == "torch" else OursWorker(opts)
        out.write(REPLY + json.dumps({"ok": True}) + "\n")
    except Exception as e:  # report the failure to the driver
        out.write(REPLY + json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        raise
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "info":
                result = worker.info()
            elif cmd["cmd"] == "setup":
                result = worker.setup(cmd["part"], cmd["variants"])
            elif cmd["cmd"] in ("warmup", "run"):
                tic, cpu = time.perf_counter(), time.process_time()
                value = worker.runners[cmd["variant"]]()
                result = {
                    "seconds": time.perf_counter() - tic,
                    "cpu_seconds": time.process_time() - cpu,
                    "value": value,
                }
            elif cmd["cmd"] == "flops":
                result = {"flops": worker.flops(cmd["part"])}
            elif cmd["cmd"] == "release":
                worker.release()
                result = {"vm_hwm_mb": vm_hwm_mb()}
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
            out.write(REPLY + json.dumps({"ok": True, **result}, default=float) + "\n")
        except Exception as e:  # the driver reports it and goes on without this variant
            import traceback

            traceback.print_exc()
            out.write(REPLY + json.dumps({"error": f"{type(e).__name__}: {str(e)[:500]}"}) + "\n")


# ============================================================================ driver
class Worker:
    """One worker subprocess and its command pipe."""

    def __init__(self, kind, python, opts, log_path):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if kind == "ours":
            env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            )
        self.kind = kind
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [
                python,
                os.path.abspath(__file__),
                f"--worker={kind}",
                f"--worker_opts={json.dumps(opts)}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.log_path = log_path

    def read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"{self.kind} worker exited ({self.proc.poll()}); see {self.log_path}"
                )
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def ask(self, cmd, **kw):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        answer = self.read()
        if "error" in answer:
            raise RuntimeError(
                f"{self.kind} worker, {cmd} {kw}: {answer['error']} (log {self.log_path})"
            )
        return answer

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except Exception:
                self.proc.kill()
        self.log.close()


def median(values):
    import statistics

    return statistics.median(values) if values else float("nan")


def part_variants(part, bf16, backends, ablations=()):
    """{variant: worker kind}; the reference's variants first; ablations (float32, the
    first backend) last."""
    precisions = ["fp32"] + (["bf16"] if bf16 else [])
    variants = {}
    for p in precisions:
        variants[f"reference_{p}"] = "torch"
    for p in precisions:
        if part == "train":
            variants[f"ours_{p}"] = "ours"
        else:
            for b in backends:
                if p == "bf16" and b != "keras":
                    continue  # the exports are float32
                variants[f"ours_{b}_{p}"] = "ours"
    for a in ablations:
        variants[f"ours_fp32@{a}" if part == "train" else f"ours_{backends[0]}_fp32@{a}"] = "ours"
    return variants


def time_part(part, workers, variants, rounds, warmups, log):
    """Warm-up then ``rounds`` rounds of one call per variant, order rotated each round."""
    entry = {"variants": {}}
    for kind in ("torch", "ours"):
        names = [v for v, k in variants.items() if k == kind]
        try:
            extra = workers[kind].ask("setup", part=part, variants=names)
        except RuntimeError as e:
            log(f"   setup failed: {e}")
            extra = {}
            for v in names:
                entry["variants"][v] = {"error": str(e)}
            continue
        for v in names:
            entry["variants"][v] = dict(extra.get(v, {}))
    live = [v for v in variants if "error" not in entry["variants"][v]]
    for v in list(live):
        cell = entry["variants"][v]
        cell["warmup_seconds"] = []
        try:
            for _ in range(warmups):
                answer = workers[variants[v]].ask("warmup", variant=v)
                cell["warmup_seconds"].append(answer["seconds"])
                cell["value"] = answer["value"]
            log(f"   {v}: warm-up {', '.join(f'{s:.2f}' for s in cell['warmup_seconds'])} s")
        except RuntimeError as e:
            cell["error"] = str(e)
            live.remove(v)
            log(f"   {v}: FAILED {e}")
    for v in live:
        entry["variants"][v]["seconds_runs"] = []
        entry["variants"][v]["cpu_seconds_runs"] = []
    for r in range(rounds):
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for v in order:
            answer = workers[variants[v]].ask("run", variant=v)
            entry["variants"][v]["seconds_runs"].append(answer["seconds"])
            entry["variants"][v]["cpu_seconds_runs"].append(answer["cpu_seconds"])
        log(
            f"   round {r + 1}/{rounds}: "
            + ", ".join(f"{v} {entry['variants'][v]['seconds_runs'][-1]:.2f}" for v in live)
        )
    for v in live:
        cell = entry["variants"][v]
        cell["seconds_median"] = median(cell["seconds_runs"])
        cell["cpu_seconds_median"] = median(cell["cpu_seconds_runs"])
    for kind in ("torch", "ours"):
        try:
            entry.setdefault("vm_hwm_mb", {})[kind] = workers[kind].ask("release")["vm_hwm_mb"]
        except RuntimeError:
            pass
    # ratios of medians ours / reference, same precision; and per round (paired)
    ratios = {}
    for v, cell in entry["variants"].items():
        if not v.startswith("ours_") or "seconds_median" not in cell:
            continue
        precision = v.split("@")[0].rsplit("_", 1)[1]
        ref = entry["variants"].get(f"reference_{precision}", {})
        if "seconds_median" in ref:
            ratios[v] = {
                "vs": f"reference_{precision}",
                "ratio_of_medians": cell["seconds_median"] / ref["seconds_median"],
                "cpu_ratio_of_medians": cell["cpu_seconds_median"] / ref["cpu_seconds_median"],
                "per_round": [a / b for a, b in zip(cell["seconds_runs"], ref["seconds_runs"])],
            }
    for side in ("reference", "ours"):
        fp32 = [v for v in entry["variants"] if v.startswith(side) and v.endswith("fp32")]
        for v in entry["variants"]:
            if v.startswith(side) and v.endswith("bf16"):
                base = v[:-4] + "fp32"
                a, b = entry["variants"][v], entry["variants"].get(base, {})
                if "seconds_median" in a and "seconds_median" in b:
                    ratios[f"{v}_vs_fp32"] = {
                        "vs": base,
                        "ratio_of_medians": a["seconds_median"] / b["seconds_median"],
                    }
        del fp32
    entry["ratios"] = ratios
    return entry


def print_part(part, entry, log):
    log(
        f"-- {part}: median wall seconds, ratio ours / reference (same precision), median process "
        f"CPU seconds and its ratio, wall seconds per round"
    )
    for v, cell in entry["variants"].items():
        if "seconds_median" not in cell:
            log(f"   {v:28s} {'-':>9s}   {cell.get('error', 'not run')[:120]}")
            continue
        ratio = entry["ratios"].get(v, {})
        r = f"{ratio['ratio_of_medians']:6.2f}x" if ratio else ""
        c = f"{ratio['cpu_ratio_of_medians']:6.2f}x" if ratio else ""
        log(
            f"   {v:34s} {cell['seconds_median']:9.3f} {r:8s} "
            f"cpu {cell['cpu_seconds_median']:9.3f} {c:8s} runs "
            + " ".join(f"{s:.2f}" for s in cell["seconds_runs"])
        )
    for name, ratio in entry["ratios"].items():
        if name.endswith("_vs_fp32"):
            log(f"   {name:40s} {ratio['ratio_of_medians']:.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference_dir", default=None, help="checkout of NVIDIA/semantic-segmentation"
    )
    parser.add_argument(
        "--torch_python",
        default="/work/venv-torch/bin/python",
        help="a Python that imports torch (and numpy)",
    )
    parser.add_argument("--parts", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument("--bf16", action="store_true", help="add the bfloat16 variants")
    parser.add_argument(
        "--backends",
        default="keras,saved_model,tflite",
        help="our inference backends: keras, saved_model, tflite",
    )
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 3; --quick 1)")
    parser.add_argument(
        "--warmups", type=int, default=0, help="warm-up calls (default 2; --quick 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for both frameworks: torch.set_num_threads, TensorFlow's intra- and "
        "inter-op pools, TFLite (0: each framework's default). On a loaded machine, 1 "
        "avoids OpenMP barrier spinning that slows PyTorch several-fold",
    )
    parser.add_argument("--train_size", default=None, help="HxW (default 256x512; --quick 64x128)")
    parser.add_argument(
        "--train_batch",
        type=int,
        default=0,
        help="default 2 (the reference's BatchNorm after image pooling needs >= 2); "
        "1 with --model=hrnet_ocr",
    )
    parser.add_argument(
        "--model",
        default="deeplab_r50",
        choices=sorted(MODELS),
        help="deeplab_r50: reference DeepV3R50 vs our ResNet-50 OS8 DeepLabV3+ (default); "
        "hrnet_ocr: reference ocrnet.HRNet_Mscale vs our HRNetV2-W48 + OCR",
    )
    parser.add_argument("--infer_size", default=None, help="HxW (default 512x1024; --quick 64x128)")
    parser.add_argument(
        "--ablations",
        default="",
        help="extra variants of ours with one speed-up off: " + ", ".join(ABLATIONS),
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="also count both graphs' matmul/convolution FLOPs (slow at full size)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, one round (developer smoke run)"
    )
    parser.add_argument("--out_dir", default=None)
    parser.add_argument(
        "--tag", default="", help="written as vs_reference_<tag>.json (default vs_reference.json)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_opts", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        opts = json.loads(args.worker_opts)
        opts["train_size"], opts["infer_size"] = (
            tuple(opts["train_size"]),
            tuple(opts["infer_size"]),
        )
        opts["chain"] = tuple(opts["chain"])
        return worker_main(args.worker, opts)

    if not args.reference_dir or not os.path.isfile(
        os.path.join(args.reference_dir, "network", "mscale.py")
    ):
        parser.error(
            f"--reference_dir={args.reference_dir!r}: expected a checkout of "
            "NVIDIA/semantic-segmentation (with network/mscale.py)"
        )
    if not os.path.exists(args.torch_python):
        parser.error(
            f"--torch_python={args.torch_python!r} does not exist: give a Python with torch"
        )
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("train", "infer"):
            parser.error(f"--parts: unknown part {p!r}; choose from train, infer")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("keras", "saved_model", "tflite"):
            parser.error(
                f"--backends: unknown backend {b!r}; choose from keras, saved_model, tflite"
            )
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    for a in ablations:
        if a not in ABLATIONS:
            parser.error(f"--ablations: unknown {a!r}; choose from {', '.join(ABLATIONS)}")
    rounds = args.rounds or (1 if args.quick else 3)
    warmups = args.warmups or (1 if args.quick else 2)
    spec = MODELS[args.model]
    opts = {
        "reference_dir": os.path.abspath(args.reference_dir),
        "threads": args.threads,
        "model": args.model,
        "chain": list(spec["chain"]),
        "train_size": parse_hw(args.train_size or ("64x128" if args.quick else "256x512")),
        "train_batch": args.train_batch or spec["train_batch"],
        "infer_size": parse_hw(args.infer_size or ("64x128" if args.quick else "512x1024")),
    }
    out_dir = args.out_dir or (
        tempfile.mkdtemp(prefix="hmsa_vs_reference_")
        if args.quick
        else str(REPO / "benchmarks" / "results")
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(
        out_dir, f"vs_reference_{args.tag}.json" if args.tag else "vs_reference.json"
    )
    log_dir = tempfile.mkdtemp(prefix="hmsa_vs_reference_logs_")

    def log(msg):
        print(msg, flush=True)

    report = {
        "benchmark": "vs_reference",
        "quick": bool(args.quick),
        "reference": {
            "repository": "NVIDIA/semantic-segmentation",
            "dir": opts["reference_dir"],
            "model": spec["reference"],
            "criterion": "CrossEntropyLoss2d",
        },
        "ours": {
            "build_model": dict(num_classes=NUM_CLASSES, **spec["ours"]),
            "loss": "ce",
            "scale_loss_weight": SCALE_LOSS_WEIGHT,
        },
        "settings": {
            **{k: v for k, v in opts.items() if k != "reference_dir"},
            "rounds": rounds,
            "warmups": warmups,
            "bf16": bool(args.bf16),
            "ablations": ablations,
            "sgd": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        },
        "cpu_flags": cpu_flags(),
        "load_average_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "parts": {},
    }
    workers = {}
    try:
        workers["torch"] = Worker(
            "torch", args.torch_python, opts, os.path.join(log_dir, "torch.log")
        )
        workers["ours"] = Worker("ours", sys.executable, opts, os.path.join(log_dir, "ours.log"))
        for kind, w in workers.items():
            first = w.read()
            if "error" in first:
                raise RuntimeError(
                    f"{kind} worker failed to start: {first['error']} (log {w.log_path})"
                )
        report["reference"]["info"] = workers["torch"].ask("info")
        report["ours"]["info"] = workers["ours"].ask("info")
        report["reference"]["info"].pop("ok", None)
        report["ours"]["info"].pop("ok", None)
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        report["machine"] = {
            "cpu": cpu,
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
        }
        log(
            f"vs_reference: {cpu}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
            f"torch {report['reference']['info']['torch']} "
            f"({report['reference']['info']['threads']} threads, "
            f"{report['reference']['info']['cpu_capability']}), "
            f"TF {report['ours']['info']['tensorflow']} "
            f"(intra {report['ours']['info']['intra_op_threads']}, "
            f"inter {report['ours']['info']['inter_op_threads']}); "
            f"parameters reference {report['reference']['info']['parameters']:,} ours "
            f"{report['ours']['info']['parameters']:,}; logs in {log_dir}"
        )
        for part in parts:
            variants = part_variants(part, args.bf16, backends, ablations)
            log(f"== {part}: " + ", ".join(variants))
            entry = time_part(part, workers, variants, rounds, warmups, log)
            if args.flops:
                for kind, side in (("torch", "reference"), ("ours", "ours")):
                    try:
                        entry.setdefault("dense_flops", {})[side] = workers[kind].ask(
                            "flops", part=part
                        )["flops"]
                    except RuntimeError as e:
                        log(f"   flops {side}: {e}")
            report["parts"][part] = entry
            print_part(part, entry, log)
            common.write_json(report, path)
    finally:
        for w in workers.values():
            w.close()
    report["load_average_at_end"] = os.getloadavg()
    common.write_json(report, path)
    print(f"RESULT_JSON {path}", flush=True)
    return report


if __name__ == "__main__":
    main()
