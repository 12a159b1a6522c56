"""hmsa_keras.evaluation and hmsa-eval: exact confusion matrices, sweeps, SavedModels,
the official Cityscapes evaluator, and clear errors for bad flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from tests.eval_helpers import ColourCodedModel, write_folder_dataset, write_run_dir

K = 4
MODEL_SIZES = ((64, 64), (64, 96), (64, 64))  # >= 32 px at scale 0.5 for the OS-16 trunk


def folder_config(root, **kw):
    from hmsa_keras.config import DataConfig

    return DataConfig(dataset="folder", data_dir=str(root), val_split="val", **kw)


def test_perfect_prediction_scores_one(tmp_path):
    from hmsa_keras.data import build_dataset, get_dataset_info
    from hmsa_keras.evaluation import evaluate

    write_folder_dataset(tmp_path)
    cfg = folder_config(tmp_path)
    info = get_dataset_info(cfg)
    results = evaluate(
        ColourCodedModel(K),
        build_dataset(cfg, "val", training=False, batch_size=1),
        K,
        chains=[(1.0,), (0.5, 1.0)],
        class_names=info.class_names,
    )
    for r in results:
        assert r.num_images == 3
        assert r.metrics["miou"] == 1.0 and r.metrics["pixel_accuracy"] == 1.0
        assert r.metrics["mean_class_accuracy"] == 1.0 and r.metrics["fw_iou"] == pytest.approx(1.0)
        off_diagonal = r.confusion_matrix - np.diag(np.diag(r.confusion_matrix))
        assert not off_diagonal.any()


CHAINS = [(1.0,), (0.5, 1.0)]


@pytest.fixture(scope="module")
def model_split(tmp_path_factory, tiny_model):
    """A 3-image folder split (two sizes) and the tiny model's one-pass sweep over it."""
    from hmsa_keras.data import build_dataset
    from hmsa_keras.evaluation import evaluate

    root = tmp_path_factory.mktemp("model_split")
    write_folder_dataset(root, sizes=MODEL_SIZES)
    cfg = folder_config(root)
    results = evaluate(
        tiny_model,
        build_dataset(cfg, "val", training=False, batch_size=1),
        K,
        chains=CHAINS,
        flip=True,
    )
    return cfg, results


def test_split_equals_direct_confusion_matrix(model_split, tiny_model):
    """A one-pass sweep (shared scale outputs) == model.segment per chain, image by image."""
    from hmsa_keras.data import get_dataset_info, iter_pairs, load_image_label
    from hmsa_keras.data.normalization import normalize
    from hmsa_keras.metrics import confusion_matrix

    cfg, results = model_split
    info = get_dataset_info(cfg)
    pairs = [load_image_label(a, b, info) for a, b in iter_pairs(cfg, "val")]
    for chain, r in zip(CHAINS, results):
        expected = np.zeros((K, K), np.int64)
        for image, label in pairs:
            out = tiny_model.segment(normalize(image[None]), scales=chain, flip=True)
            expected += confusion_matrix(label[None].astype(np.int32), out["classes"], K).numpy()
        np.testing.assert_array_equal(r.confusion_matrix, expected)
        assert r.num_images == 3 and expected.sum() == sum(
            int((lbl != 255).sum()) for _, lbl in pairs
        )


def test_tiled_evaluation_matches_untiled(model_split, tiny_model):
    """evaluate(..., tile_size): a tile covering every image gives the untiled matrices exactly;
    smaller tiles count the same pixels and differ by at most tiling's documented difference
    (class maps agree on >= 97% of pixels for this network, docs/evaluation.md)."""
    from hmsa_keras.data import build_dataset
    from hmsa_keras.evaluation import evaluate

    cfg, results = model_split
    dataset = build_dataset(cfg, "val", training=False, batch_size=1)
    covering = evaluate(tiny_model, dataset, K, chains=CHAINS, flip=True, tile_size=(64, 96))
    for r, t in zip(results, covering):
        np.testing.assert_array_equal(t.confusion_matrix, r.confusion_matrix)
        assert t.metrics["tile_size"] == [64, 96]
    tiled = evaluate(
        tiny_model, dataset, K, chains=CHAINS, flip=True, tile_size=(48, 48), tile_overlap=16
    )
    for r, t in zip(results, tiled):
        np.testing.assert_array_equal(
            t.confusion_matrix.sum(1), r.confusion_matrix.sum(1)
        )  # same pixels
        total = r.confusion_matrix.sum()
        assert (
            abs(int(np.trace(t.confusion_matrix)) - int(np.trace(r.confusion_matrix)))
            <= 0.03 * total
        )


def _save_stub_saved_model(path):
    import tensorflow as tf

    stub = ColourCodedModel(K)
    from hmsa_keras.data.normalization import normalize

    class Exported(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
        )
        def serve(self, images):
            out = stub.segment(normalize(images))
            return {"classes": out["classes"], "probabilities": tf.nn.softmax(out["logits"])}

    module = Exported()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.mark.slow
def test_saved_model_evaluation(tmp_path):
    from hmsa_keras.data import build_dataset
    from hmsa_keras.evaluation import evaluate
    from hmsa_keras.export.saved_model import SavedModelSegmenter

    write_folder_dataset(tmp_path / "data", noise=0.2)
    cfg = folder_config(tmp_path / "data")
    _save_stub_saved_model(tmp_path / "sm")
    sm = SavedModelSegmenter(str(tmp_path / "sm"))
    assert sm.num_classes == K
    ds = build_dataset(cfg, "val", training=False, batch_size=1)
    got = evaluate(sm, ds, K)[0]
    want = evaluate(ColourCodedModel(K), ds, K)[0]
    np.testing.assert_array_equal(got.confusion_matrix, want.confusion_matrix)
    assert 0.3 < got.metrics["miou"] < 1.0  # noise makes it imperfect


# ------------------------------------------------------------------ Cityscapes
def _fake_cityscapes(root, rng):
    """leftImg8bit/gtFine val tree, 2 cities, labelIds incl. void ids, images painted
    with trainIds (void pixels and 15% of all pixels painted with a random class)."""
    from PIL import Image

    from hmsa_keras.data.labels import CITYSCAPES_LABELS

    ids = [l.id for l in CITYSCAPES_LABELS if l.id >= 0]
    lut = {l.id: l.train_id for l in CITYSCAPES_LABELS if l.id >= 0}
    for city, frames in (("aachen", 2), ("bochum", 1)):
        for f in range(frames):
            stem = f"{city}_{f:06d}_{19 + f:06d}"
            ldir = root / "gtFine" / "val" / city
            idir = root / "leftImg8bit" / "val" / city
            ldir.mkdir(parents=True, exist_ok=True)
            idir.mkdir(parents=True, exist_ok=True)
            label_ids = rng.choice(ids, size=(8, 16)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
            train = np.vectorize(lambda i: lut[i])(label_ids)
            painted = np.where(
                (train == 255) | (rng.random(train.shape) < 0.15),
                rng.integers(0, 19, size=train.shape),
                train,
            )
            from tests.eval_helpers import paint

            Image.fromarray(paint(painted)).save(idir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids, mode="L").save(ldir / f"{stem}_gtFine_labelIds.png")


def test_official_cityscapes_evaluator_agrees(tmp_path):
    try:
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling  # noqa: F401
    except Exception as exc:  # not installed, or numpy without np.in1d
        pytest.skip(
            f"cityscapesscripts is not importable ({exc.__class__.__name__}: {exc}); "
            "pip install cityscapesscripts (numpy < 2.4)"
        )
    from hmsa_keras.config import DataConfig
    from hmsa_keras.data import build_dataset, get_dataset_info, iter_pairs
    from hmsa_keras.evaluation import evaluate
    from hmsa_keras.evaluation.cityscapes import (
        CityscapesSubmissionWriter,
        official_cityscapes_eval,
    )

    _fake_cityscapes(tmp_path / "cs", np.random.default_rng(1))
    cfg = DataConfig(dataset="cityscapes", data_dir=str(tmp_path / "cs"))
    info = get_dataset_info(cfg, "val")
    writer = CityscapesSubmissionWriter(str(tmp_path / "results"), iter_pairs(cfg, "val"))
    ours = evaluate(
        ColourCodedModel(19),
        build_dataset(cfg, "val", training=False, batch_size=1),
        19,
        class_names=info.class_names,
        on_batch=writer,
    )[0].metrics
    writer.close()
    assert writer.index == 3
    assert sorted(os.listdir(tmp_path / "results")) == ["aachen", "bochum"]
    official = official_cityscapes_eval(str(tmp_path / "results"), str(tmp_path / "cs"), "val")
    assert 0.5 < ours["miou"] < 1.0
    assert official["miou"] == pytest.approx(ours["miou"], abs=1e-12)
    for row in ours["per_class"]:
        theirs = official["class_iou"][row["name"]]
        assert (np.isnan(theirs) and np.isnan(row["iou"])) or theirs == pytest.approx(
            row["iou"], abs=1e-12
        )


# ------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    "args, message",
    [
        ((), "--model_dir: give --model_dir"),
        (("--model_dir={missing}",), "--model_dir: No model at"),
        (("--model_dir={run}", "--scales=0.5,abc"), "--scales: bad scale chain"),
        (("--model_dir={run}", "--scales=0,1"), "--scales: every scale must be"),
        (("--model_dir={run}", "--sweep=1.0;x"), "--sweep: bad scale chain"),
        (("--model_dir={run}", "--sweep=1.0", "--scales=1.0"), "--sweep: replaces --scales"),
        (("--model_dir={run}", "--num_cpu_replicas=2"), "--num_cpu_replicas: only applies"),
        (("--saved_model={missing}",), "--saved_model: "),
        (
            ("--model_dir={run}", "--sweep=1.0;0.5,1.0", "--cityscapes_submission_dir=x"),
            "needs a single chain",
        ),
    ],
)
def test_eval_cli_bad_flags(tmp_path, args, message):
    from hmsa_keras.cli import eval as cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")  # only its existence is checked before loading
    args = [a.format(run=run, missing=tmp_path / "nope") for a in args]
    with pytest.raises(app.UsageError, match=message.replace("(", r"\(").replace("+", r"\+")):
        cli.TOOL.invoke(cli.main, args)


def test_eval_cli_unknown_strategy_is_a_flag_error():
    from hmsa_keras.cli import eval as cli

    with pytest.raises(app.UsageError, match="strategy"):
        cli.TOOL.parse(["prog", "--strategy=bogus"])


@pytest.mark.slow
def test_eval_cli_mirrored_end_to_end(tmp_path, tiny_model, model_split):
    """hmsa-eval in a fresh process on 2 logical CPU replicas (3 images of two sizes: the
    last round is padded) gives the same matrix as the single-device evaluation."""
    from hmsa_keras.conventions import chain_tag

    cfg, want = model_split
    run = write_run_dir(tmp_path / "run", tiny_model, cfg)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hmsa_keras.cli.eval",
            f"--model_dir={run}",
            "--scales=1.0",
            "--flip",
            "--strategy=mirrored",
            "--num_cpu_replicas=2",
            f"--output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout and "frequency-weighted IoU" in proc.stdout
    got = json.loads((tmp_path / "out" / f"metrics_{chain_tag((1.0,), True)}.json").read_text())
    assert got["replicas"] == 2 and got["num_images"] == 3
    np.testing.assert_array_equal(np.array(got["confusion_matrix"]), want[0].confusion_matrix)
    assert (tmp_path / "out" / f"metrics_{chain_tag((1.0,), True)}.csv").is_file()


def test_sweep_report_and_files(tmp_path, model_split):
    from hmsa_keras.metrics import format_sweep, write_results

    _, results = model_split
    table = format_sweep(results)
    assert "1+flip" in table and "0.5,1+flip" in table and "mIoU" in table
    paths = write_results(results, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        [
            "metrics_s1_flip.json",
            "metrics_s1_flip.csv",
            "metrics_s0.5-1_flip.json",
            "metrics_s0.5-1_flip.csv",
            "sweep.json",
            "sweep.csv",
        ]
    )
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["chain"] for row in sweep] == ["1+flip", "0.5,1+flip"]
    assert sweep[1]["miou"] == pytest.approx(results[1].metrics["miou"])
