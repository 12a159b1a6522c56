"""Quiet, readable console output: plain progress lines when stdout is not a
terminal, TensorFlow's INFO lines hidden unless --verbosity=1."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hmsa_keras.training.progress import LineProgress, progress

REPO = Path(__file__).resolve().parents[1]
NOISE = (
    "\r",
    "\x1b[",
    "\b",
    "I0000",
    "absl::InitializeLog",
    "Sharding callback",
    "fingerprint",
    "port.cc",
    "cpu_feature_guard",
)


def test_line_progress_prints_about_ten_plain_lines_per_epoch():
    out = io.StringIO()
    bar = LineProgress(100, epoch=2, epochs=3, stream=out)
    for step in range(1, 101):
        bar.update(step, [("loss", 1.0 / step), ("fused", 0.5)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and all(not any(n in line for n in NOISE) for line in lines), lines
    assert lines[0].startswith("epoch 2/3 step  10/100: loss=0.1000 fused=0.5000 (")
    assert lines[-1].startswith("epoch 2/3 step 100/100: loss=0.0100")


def test_line_progress_resumed_mid_epoch_keeps_the_same_lines():
    out = io.StringIO()
    bar = LineProgress(95, stream=out)
    for step in range(45, 96):
        bar.update(step, [("loss", 2.0)])
    steps = [line.split(":")[0] for line in out.getvalue().splitlines()]
    assert steps == [f"step {n}/95" for n in (50, 60, 70, 80, 90, 95)]


def test_progress_bar_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert isinstance(progress(10, ["loss"]), LineProgress)
    monkeypatch.setattr(sys, "stdout", Terminal())
    import keras

    assert isinstance(progress(10, ["loss"]), keras.utils.Progbar)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", **extra)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG"):
        env.pop(name, None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", [0, 1])
def test_tensorflow_load_time_lines_only_with_verbosity(verbosity):
    code = (
        "import sys; from hmsa_keras.cli.tool import setup_logging; "
        f"setup_logging({verbosity}); import tensorflow as tf; tf.constant(1) + 1; "
        "print('ours', file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.rstrip().endswith("ours")
    noisy = "port.cc" in proc.stderr or "absl::InitializeLog" in proc.stderr
    assert noisy == (verbosity == 1), proc.stderr


@pytest.mark.slow
def test_training_and_export_log_written_to_a_file_is_readable(tmp_path):
    """A short hmsa-train (with its SavedModel export) redirected to a file, as in
    ``hmsa-train ... > train.log 2>&1``: plain lines, no redraws, no TensorFlow INFO lines."""
    log = tmp_path / "train.log"
    # 48x48 crops, not 32x32: at 32x32 the 0.5x pass reaches the trunk's stride 16 at 1x1, where
    # BatchNorm over a batch of 2 values gives gradients of 1e5 and the run can end in NaN
    flags = [
        "--dataset=synthetic",
        "--synthetic_train_size=16",
        "--synthetic_val_size=2",
        "--synthetic_image_size=64x64",
        "--crop_size=48x48",
        "--alpha=0.35",
        "--head_channels=16",
        "--low_level_channels=8",
        "--batch_size=2",
        "--epochs=1",
        "--steps_per_epoch=10",
        "--image_every=0",
        f"--model_dir={tmp_path / 'run'}",
        f"--export_dir={tmp_path / 'sm'}",
        "--export_scales=1.0",
    ]
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "hmsa_keras.cli.train", *flags],
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=1200,
            cwd=REPO,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    for noise in NOISE:
        assert noise not in text, (noise, text[-5000:])
    lines = text.splitlines()
    progress_lines = [line for line in lines if line.startswith("epoch 1/1 step ")]
    assert len(progress_lines) == 10, text
    assert any(line.startswith("Epoch 1/1: train_loss=") for line in lines)
    assert any(line.startswith("Exported SavedModel to ") for line in lines)
    # then the per-class IoU table of the best model (10 classes + 10 lines), Done, Exported
    table = text.index("Per-class IoU of best.keras")
    assert "mIoU" in text[table:] and "mean class accuracy" in text[table:], text[-3000:]
    before_table = len(text[:table].splitlines())
    # nothing else: one line per progress report and per result, the table, two last lines
    assert before_table == 12 and len(lines) <= before_table + 20 + 2, text
