"""hmsa-train end to end: flag validation, help, run artefacts, resume after SIGKILL, NaN stop.

Every run is a fresh ``python -m hmsa_keras.cli.train`` process (the same entry point as the
``hmsa-train`` console script) on a tiny synthetic setup.
"""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from tests.conftest import REPO

HELPERS = REPO / "tests" / "helpers"
TIMEOUT = 600

# Tiny but complete: hierarchical 0.5/1.0 training, validation, checkpoints, TensorBoard images.
TINY_FLAGS = [
    "--dataset=synthetic",
    "--synthetic_train_size=16",
    "--synthetic_val_size=4",
    "--alpha=0.35",
    "--head_channels=16",
    "--crop_size=48,48",
    "--scale_min=0.75",
    "--scale_max=1.25",
    "--batch_size=2",
    "--learning_rate=0.001",
    "--weight_decay=1e-4",
    "--seed=0",
]
RUN_FLAGS = TINY_FLAGS + [
    "--epochs=2",
    "--steps_per_epoch=3",
    "--checkpoint_every=2",
    "--image_every=2",
]

NOISE = (
    "WARNING: All log messages",
    "I0000",
    "W0000",
    "E0000",
    "To enable the following",
    "This TensorFlow binary",
)


def env():
    e = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_DETERMINISTIC_OPS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    e.pop("TF_CONFIG", None)
    return e


def train_cmd(*flags):
    return [sys.executable, "-m", "hmsa_keras.cli.train", *flags]


def run(cmd, timeout=TIMEOUT):
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def meaningful(text):
    return [l for l in text.splitlines() if l.strip() and not l.startswith(NOISE)]


def keras_weights(path):
    """Every weight array of a ``.keras`` file, read with h5py (no model is built)."""
    import h5py

    out = {}
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f, h5py.File(f, "r") as h5:
        h5.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def event_tags(folder):
    import tensorflow as tf

    tags = set()
    for name in os.listdir(folder):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
                tags.update(v.tag for v in event.summary.value)
    return tags


# ---------------------------------------------------------------------------- flags
@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, flag_name",
    [
        (["--trunk=vgg"], "--trunk"),
        (["--crop_size=a,b"], "--crop_size"),
        (["--crop_size=64x"], "--crop_size"),
        (["--dataset=camvid"], "--data_dir"),
        (["--dataset=nope"], "--dataset"),
        (["--init_from=/nonexistent/run"], "--init_from"),
    ],
)
def test_bad_flag_stops_with_one_line_naming_it(tmp_path, flags, flag_name):
    model_dir = tmp_path / "run"
    tic = time.time()
    proc = run(train_cmd(*flags, f"--model_dir={model_dir}"), timeout=120)
    lines = meaningful(proc.stderr)
    assert proc.returncode != 0
    assert lines and flag_name in lines[0], proc.stderr
    # absl adds 'Pass --helpfull'
    assert len(lines) <= 2, f"expected a one-line error, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert not model_dir.exists(), "stopped only after starting work"
    assert time.time() - tic < 60


@pytest.mark.slow
def test_helpfull_lists_every_flag():
    proc = run(train_cmd("--helpfull"), timeout=120)
    text = proc.stdout + proc.stderr
    for flag in (
        "--trunk",
        "--crop_size",
        "--strategy",
        "--num_cpu_replicas",
        "--precision",
        "--freeze",
        "--reference_batch_size",
        "--checkpoint_every",
        "--warmup_steps",
        "--model_dir",
    ):
        assert flag in text, flag


# ---------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 2-epoch run (also the artefact check)."""
    model_dir = tmp_path_factory.mktemp("cli") / "reference"
    proc = run(train_cmd(*RUN_FLAGS, f"--model_dir={model_dir}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return model_dir, proc


@pytest.mark.slow
def test_short_run_leaves_the_documented_model_dir(reference_run):
    model_dir, proc = reference_run
    assert meaningful(proc.stdout)[0].startswith("Starting a new run")
    assert "Done: best val mIoU" in proc.stdout
    for name in ("flags.txt", "config.json", "best.keras", "last.keras", "history.json"):
        assert (model_dir / name).is_file(), name
    flags_txt = (model_dir / "flags.txt").read_text()
    assert "--crop_size=48,48" in flags_txt and "--checkpoint_every=2" in flags_txt
    config = json.loads((model_dir / "config.json").read_text())
    assert config["DataConfig"]["crop_size"] == [48, 48] and config["ModelConfig"]["alpha"] == 0.35
    ckpt = (model_dir / "checkpoints" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-6"' in ckpt
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and [h["step"] for h in history] == [3, 6]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_miou"] <= 1 for h in history)
    train_tags = event_tags(model_dir / "logs" / "train")
    val_tags = event_tags(model_dir / "logs" / "val")
    assert {
        "images/input",
        "images/ground_truth",
        "images/prediction",
        "images/attention_0.5x",
        "loss",
        "learning_rate",
    } <= train_tags, train_tags
    assert {"loss", "miou", "pixel_accuracy", "mean_class_accuracy"} <= val_tags, val_tags
    # diagnosing images of every validation, under the val run (tests/test_summaries.py: content)
    assert {"images/examples", "images/worst", "images/confusion_matrix"} <= val_tags, val_tags
    # the per-class table of the best validation closes the run
    table = proc.stdout.split("Per-class IoU of best.keras", 1)[1]
    assert "sky" in table and "mIoU" in table
    best = json.loads((model_dir / "best_metrics.json").read_text())
    assert best["miou"] == pytest.approx(max(h["val_miou"] for h in history), abs=1e-6)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(reference_run, tmp_path):
    ref_dir, _ = reference_run
    model_dir = tmp_path / "killed"
    cmd = train_cmd(*RUN_FLAGS, f"--model_dir={model_dir}")
    index = model_dir / "checkpoints" / "checkpoint"
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + TIMEOUT
        while not index.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert index.exists(), "no checkpoint was written"
        proc.send_signal(signal.SIGKILL)  # straight after the step-2 checkpoint, mid epoch 1
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (model_dir / "last.keras").exists(), "the run finished before it could be killed"
    assert 'model_checkpoint_path: "ckpt-2"' in index.read_text()

    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    first = meaningful(resumed.stdout)[0]
    assert first.startswith("Resuming from") and "ckpt-2" in first and "step 2/6" in first, first

    ref = json.loads((ref_dir / "history.json").read_text())
    got = json.loads((model_dir / "history.json").read_text())
    assert [h["step"] for h in got] == [3, 6]
    for key in ("train_loss", "val_loss", "val_miou", "val_pixel_accuracy"):
        np.testing.assert_allclose(got[-1][key], ref[-1][key], rtol=2e-3, atol=1e-4, err_msg=key)
    # The epoch cut by the kill reports its full-epoch mean too (trackers are checkpointed).
    np.testing.assert_allclose(
        got[0]["train_loss"], ref[0]["train_loss"], rtol=2e-3, err_msg="epoch 1"
    )
    a, b = keras_weights(ref_dir / "last.keras"), keras_weights(model_dir / "last.keras")
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst < 1e-3, f"resumed weights differ from the uninterrupted run by {worst}"


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    import tensorflow as tf

    model_dir = tmp_path / "nan"
    flags = TINY_FLAGS + [
        "--fusion=single",
        "--epochs=1",
        "--steps_per_epoch=5",
        "--checkpoint_every=2",
        "--image_every=0",
        f"--model_dir={model_dir}",
    ]
    proc = run([sys.executable, str(HELPERS / "nan_driver.py"), "3", *flags])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = [l for l in meaningful(proc.stderr) if l.startswith("ERROR")]
    assert error and "nan" in error[0].lower() and "step 3" in error[0] and "ckpt-2" in error[0], (
        proc.stderr[-3000:]
    )
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert latest is not None and latest.endswith("ckpt-2")
    reader = tf.train.load_checkpoint(latest)
    shapes = reader.get_variable_to_shape_map()
    step_key = next(k for k in shapes if k.startswith("step/"))
    assert reader.get_tensor(step_key) == 2
    floats = [k for k in shapes if reader.get_variable_to_dtype_map()[k].is_floating]
    assert len(floats) > 100
    assert all(np.all(np.isfinite(reader.get_tensor(k))) for k in floats)
    assert not (model_dir / "last.keras").exists()


@pytest.mark.parametrize("extra, want", [([], 16), (["--attention_channels=4"], 4)])
def test_attention_channels_flag(extra, want):
    """--attention_channels overrides --head_channels for the attention head only."""
    from hmsa_keras.cli import train

    model_cfg, _, _ = train.configs_from_argv([*TINY_FLAGS, *extra])
    assert model_cfg.attention_channels == want and model_cfg.aspp_channels == 16


# ---------------------------------------------------------------------------- warm starts, stages
def _load(path):
    import hmsa_keras

    return hmsa_keras.load_model(str(path))


def _by_group(model):
    """{group: {variable path: array}} with the --freeze groups of an HMSA model."""
    from hmsa_keras.models.hmsa import FREEZE_GROUPS

    out = {g: {} for g in (*FREEZE_GROUPS, "other")}
    for layer in model.network.layers:
        group = next((g for g, p in FREEZE_GROUPS.items() if layer.name.startswith(p)), "other")
        for v in layer.weights:
            out[group][v.path] = np.asarray(v.numpy())
    return out


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _changed(a, b, trainable_only=True):
    keys = [
        k for k in a if not trainable_only or not k.endswith(("moving_mean", "moving_variance"))
    ]
    return [k for k in keys if not np.array_equal(a[k], b[k])]


STAGE_FLAGS = [
    "--dataset=synthetic",
    "--synthetic_train_size=16",
    "--synthetic_val_size=4",
    "--alpha=0.35",
    "--head_channels=16",
    "--crop_size=48,48",
    "--scale_min=0.75",
    "--scale_max=1.25",
    "--batch_size=2",
    "--class_uniform_fraction=0",
    "--warmup_steps=0",
    "--epochs=1",
    "--steps_per_epoch=3",
    "--image_every=0",
    "--summary_images=1",
    "--worst_images=1",
    "--seed=0",
]


def _stage(n, name, model_dir, *extra):
    flagfile = REPO / "flags" / f"staged_camvid_{n}_{name}.cfg"
    proc = run(
        train_cmd(f"--flagfile={flagfile}", *STAGE_FLAGS, f"--model_dir={model_dir}", *extra)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_staged_chain_with_init_from(tmp_path):
    """The staged recipes (flags/staged_camvid_*) on tiny synthetic data: stage 1 single-scale,
    stage 2 attention only (--init_from stage 1), stage 3 attention frozen (--init_from stage 2).
    Frozen parts keep exactly the weights they started from (the previous stage's best model),
    the trained parts change; a resumed stage does not re-apply --init_from."""
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    _stage(1, "single", s1, "--learning_rate=0.001")
    proc2 = _stage(2, "attention", s2, f"--init_from={s1}")
    first = _by_group(_load(s1 / "best.keras"))
    second = _by_group(_load(s2 / "last.keras"))

    total = sum(len(g) for g in first.values())
    want = f"Warm start from {s1}/best.keras: loaded {total} of {total} tensors"
    assert want in proc2.stdout, proc2.stdout
    config = json.loads((s2 / "config.json").read_text())
    assert config["TrainConfig"]["init_from"] == str(s1)
    assert config["TrainConfig"]["freeze"] == ["trunk", "seg_head"]
    assert config["ModelConfig"]["fusion"] == "hierarchical"
    report = json.loads((s2 / "warm_start.json").read_text())
    assert len(report["loaded"]) == total and not report["mismatched"] and not report["absent"]
    # stage 2 started from stage 1's weights exactly: its frozen parts (BatchNorm statistics
    # included: frozen layers run in inference mode) are bit-identical to stage 1's best model
    assert _same(first["trunk"], second["trunk"]) and _same(first["seg_head"], second["seg_head"])
    assert _changed(first["attention"], second["attention"]), "the attention did not train"

    proc3 = _stage(3, "finetune", s3, f"--init_from={s2}", "--checkpoint_every=3")
    assert "Warm start from" in proc3.stdout
    start = _by_group(_load(s2 / "best.keras"))
    third = _by_group(_load(s3 / "last.keras"))
    assert _same(start["attention"], third["attention"])
    assert _changed(start["trunk"], third["trunk"])
    assert _changed(start["seg_head"], third["seg_head"])

    # Resume stage 3 for a second epoch, pointing --init_from at stage 1 (whose attention differs):
    # the run continues from its own checkpoint and does not re-apply the warm start.
    proc3b = _stage(3, "finetune", s3, f"--init_from={s1}", "--epochs=2")
    assert meaningful(proc3b.stdout)[0].startswith("Resuming from"), proc3b.stdout[:2000]
    assert "is not applied again" in proc3b.stdout and "Warm start from" not in proc3b.stdout
    resumed = _by_group(_load(s3 / "last.keras"))
    assert _same(start["attention"], resumed["attention"])
    assert not _same(first["attention"], resumed["attention"])


@pytest.mark.slow
def test_init_from_without_matching_tensors_stops_with_one_line(tmp_path):
    import keras

    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(3, name="unrelated")(inp)).save(tmp_path / "other.keras")
    proc = run(
        train_cmd(
            *TINY_FLAGS,
            "--epochs=1",
            "--steps_per_epoch=1",
            f"--model_dir={tmp_path / 'run'}",
            f"--init_from={tmp_path / 'other.keras'}",
        )
    )
    lines = meaningful(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[0].startswith("hmsa-train: error: --init_from: ")
    assert "other.keras" in lines[0]
    assert "no tensor matches this model by layer name and shape" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_early_stopping_patience(tmp_path):
    """LR 0 and BatchNorm momentum 1: the model never changes, so the val mIoU of epoch 1 is
    never beaten and --early_stopping_patience=1 stops after epoch 2 of 4; the same command
    again does not train any further."""
    model_dir = tmp_path / "es"
    cmd = train_cmd(
        *TINY_FLAGS,
        "--learning_rate=0",
        "--bn_momentum=1.0",
        "--epochs=4",
        "--steps_per_epoch=2",
        "--early_stopping_patience=1",
        "--image_every=0",
        f"--model_dir={model_dir}",
    )
    proc = run(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["val_miou"] == history[1]["val_miou"]
    assert (
        "Early stopping after epoch 2: val mIoU has not improved for 1 validation(s)" in proc.stdout
    )
    assert (model_dir / "last.keras").is_file() and (model_dir / "best.keras").is_file()
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already stopped early" in again.stdout
    assert len(json.loads((model_dir / "history.json").read_text())) == 2


@pytest.mark.slow
def test_validation_on_two_replicas_with_an_odd_split_matches_one_device(tmp_path):
    """5 validation images on 2 replicas: the last batch is completed with an all-ignore filler
    (an empty replica batch fails in BatchNorm). With LR 0 and BatchNorm momentum 1 the model
    stays at its (seeded) initial weights, so validation must equal the one-device run's."""
    flags = [
        *TINY_FLAGS,
        "--synthetic_val_size=5",
        "--learning_rate=0",
        "--bn_momentum=1.0",
        "--epochs=1",
        "--steps_per_epoch=1",
        "--image_every=0",
        "--worst_images=5",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    for model_dir, extra in ((one, []), (two, ["--strategy=mirrored", "--num_cpu_replicas=2"])):
        proc = run(train_cmd(*flags, *extra, f"--model_dir={model_dir}"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    a = json.loads((one / "history.json").read_text())[0]
    b = json.loads((two / "history.json").read_text())[0]
    for key in ("val_loss", "val_miou", "val_pixel_accuracy"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, err_msg=key)
    assert "images/worst" in event_tags(two / "logs" / "val")
