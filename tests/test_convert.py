"""hmsa-convert: checkpoint kinds, the written run directory, and the errors for a
wrong architecture, a truncated file or a wrong class count. Uses the golden HRNet-OCR
state_dict (tests/goldens); no PyTorch needed (the .pth tests skip without it)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hmsa_keras.config import read_run_config
from hmsa_keras.convert import (
    CheckpointError,
    convert_checkpoint,
    hrnet_ocr,
    prepare,
    read_checkpoint,
)
from tests.goldens import compare_hrnet_ocr as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def state():
    return read_checkpoint(C.Golden().state_dict_path)[0]


def _npz(tmp_path, state, name="ckpt.npz"):
    path = str(tmp_path / name)
    np.savez(path, **state)
    return path


def test_name_map_rules():
    assert hrnet_ocr.trunk_module("stem1_conv") == "conv1"
    assert hrnet_ocr.trunk_module("stem2_bn") == "bn2"
    assert hrnet_ocr.trunk_module("layer1_b0_down_bn") == "layer1.0.downsample.1"
    assert hrnet_ocr.trunk_module("transition2_br2_down0_conv") == "transition2.2.0.0"
    assert hrnet_ocr.trunk_module("transition1_br0_bn") == "transition1.0.1"
    assert hrnet_ocr.trunk_module("stage3_m2_br1_b3_conv1") == "stage3.2.branches.1.3.conv1"
    assert hrnet_ocr.trunk_module("stage4_m0_fuse0_from3_bn") == "stage4.0.fuse_layers.0.3.1"
    assert (
        hrnet_ocr.trunk_module("stage4_m1_fuse3_from1_down1_conv") == "stage4.1.fuse_layers.3.1.1.0"
    )
    with pytest.raises(KeyError):
        hrnet_ocr.trunk_module("head_concat")


def test_prepare_reads_the_architecture_from_shapes(state, tmp_path):
    prefixed = {f"module.{k}": v for k, v in state.items()}  # torch.nn.DataParallel keys
    prefixed["module.criterion.nll_loss.weight"] = np.ones(3, np.float32)  # a loss buffer
    _, kind, options, unused = prepare(_npz(tmp_path, prefixed), "cityscapes", num_classes=3)
    assert kind == "mscale" and unused == ["criterion.nll_loss.weight"]
    assert options == dict(
        hrnet_width=4,
        num_classes=3,
        ocr_mid_channels=32,
        ocr_key_channels=16,
        attention_channels=16,
    )


def test_conversion_writes_a_run_directory_and_maps_every_tensor(state, tmp_path):
    out = str(tmp_path / "converted")
    result = convert_checkpoint(C.Golden().state_dict_path, out, "mapillary", num_classes=3)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(result["mapped"]) == len(state) - len(counters) and not result["fresh"]
    model_cfg, data_cfg, train_cfg = read_run_config(out)
    assert (
        model_cfg.trunk == "hrnetv2_w48" and model_cfg.head == "ocr" and model_cfg.num_classes == 3
    )
    assert data_cfg.dataset == "mapillary" and data_cfg.eval_long_edge == 2177
    assert train_cfg.eval_scales == (0.25, 0.5, 1.0, 2.0)
    report = open(os.path.join(out, "conversion.txt")).read()
    assert (
        "backbone.stage4.2.fuse_layers.3.0.2.0.weight [32, 4, 3, 3] -> "
        "trunk/stage4_m2_fuse3_from0_down2_conv/kernel [3, 3, 4, 32]"
    ) in report
    with pytest.raises(FileExistsError):
        convert_checkpoint(C.Golden().state_dict_path, out, "mapillary", num_classes=3)
    kernel = result["model"].network.get_layer("trunk").get_layer("stem1_conv").kernel.numpy()
    np.testing.assert_array_equal(kernel, state["backbone.conv1.weight"].transpose(2, 3, 1, 0))


@pytest.mark.slow
def test_converted_model_loads_from_its_directory(tmp_path):
    import hmsa_keras

    out = str(tmp_path / "converted")
    result = convert_checkpoint(C.Golden().state_dict_path, out, "cityscapes", num_classes=3)
    loaded = hmsa_keras.load_model(out)
    x = np.random.default_rng(0).normal(size=(1, 37, 45, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.network(x)["logits"], result["model"].network(x)["logits"], atol=1e-6
    )


def test_wrong_class_count_names_the_classifier(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=r"3 classes \(ocr.cls_head.weight \[3, 32, 1, 1\]\) "
        r"but cityscapes has 19",
    ):
        prepare(C.Golden().state_dict_path, "cityscapes")
    with pytest.raises(CheckpointError, match="--num_classes=5"):
        prepare(C.Golden().state_dict_path, "cityscapes", num_classes=5)


def test_wrong_architecture_names_missing_unexpected_and_mismatched_tensors(state, tmp_path):
    broken = dict(state)
    del broken["backbone.stage4.2.branches.3.3.conv2.weight"]
    broken["backbone.stage5.0.conv.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    broken["ocr.cls_head.bias"] = np.zeros((4,), np.float32)
    with pytest.raises(CheckpointError) as err:
        convert_checkpoint(
            _npz(tmp_path, broken), str(tmp_path / "out"), "cityscapes", num_classes=3
        )
    message = str(err.value)
    assert "1 missing tensor(s): backbone.stage4.2.branches.3.3.conv2.weight" in message
    assert "1 unexpected tensor(s): backbone.stage5.0.conv.weight" in message
    assert "ocr.cls_head.bias: checkpoint [4] vs model [3]" in message
    assert not os.path.exists(tmp_path / "out")

    deeplab = {
        "backbone.layer0.0.weight": np.zeros((64, 3, 7, 7), np.float32),
        "aspp.features.0.0.weight": np.zeros((256, 2048, 1, 1), np.float32),
    }
    with pytest.raises(
        CheckpointError,
        match="cannot read hrnet_width: tensor 'backbone.transition1.0.0.weight' is missing",
    ):
        prepare(_npz(tmp_path, deeplab, "deeplab.npz"), "cityscapes")
    with pytest.raises(CheckpointError, match="not an HRNet-OCR checkpoint"):
        prepare(_npz(tmp_path, {"fc.weight": np.zeros((2, 2))}, "other.npz"), "cityscapes")


def test_truncated_and_unknown_files_fail_clearly(tmp_path):
    data = open(C.Golden().state_dict_path, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.npz: cannot read as a NumPy .npz"):
        read_checkpoint(str(truncated))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(__file__)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(str(tmp_path / "absent.pth"))


@pytest.mark.slow
def test_ocrnet_and_imagenet_checkpoints_leave_the_missing_heads_fresh(state, tmp_path):
    ocrnet = {k: v for k, v in state.items() if not k.startswith("scale_attn.")}
    result = convert_checkpoint(
        _npz(tmp_path, ocrnet, "ocrnet.npz"), str(tmp_path / "a"), "cityscapes", num_classes=3
    )
    assert result["kind"] == "ocrnet" and all(n.startswith("attn_") for n in result["fresh"])
    assert len(result["fresh"]) == 5  # attn_1_conv/bn, attn_2_conv/bn, attn_out

    # the ImageNet HRNet file: trunk keys without "backbone.", "model." and an ImageNet head
    imagenet = {
        "model." + k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")
    }
    imagenet["classifier.weight"] = np.zeros((1000, 2048), np.float32)
    imagenet["incre_modules.0.0.conv1.weight"] = np.zeros((32, 4, 1, 1), np.float32)
    result = convert_checkpoint(
        _npz(tmp_path, imagenet, "imagenet.npz"), str(tmp_path / "b"), "cityscapes"
    )
    assert result["kind"] == "imagenet" and result["options"]["num_classes"] == 19
    assert result["unused"] == ["classifier.weight", "incre_modules.0.0.conv1.weight"]
    assert "ocr_cls" in result["fresh"] and not any(n.startswith("trunk") for n in result["fresh"])


def test_reading_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ImportError, match=r'pip install "hmsa_keras\[convert\]"'):
        read_checkpoint(str(path))


def test_reading_pth_snapshots_with_torch(state, tmp_path):
    torch = pytest.importorskip("torch")
    snapshot = {
        "state_dict": {f"module.{k}": torch.from_numpy(np.asarray(v)) for k, v in state.items()},
        "epoch": 3,
        "arch": "network.ocrnet.HRNet_Mscale",
        "mean_iu": np.float64(0.5),
        "num_classes": 3,
    }
    torch.save(snapshot, tmp_path / "snap.pth")
    loaded, meta = read_checkpoint(str(tmp_path / "snap.pth"))
    assert set(loaded) == set(state) and meta["arch"] == "network.ocrnet.HRNet_Mscale"
    snapshot["arch"] = "network.deepv3.DeepV3Plus"
    torch.save(snapshot, tmp_path / "deeplab.pth")
    with pytest.raises(CheckpointError, match="arch 'network.deepv3.DeepV3Plus'"):
        prepare(str(tmp_path / "deeplab.pth"), "cityscapes", num_classes=3)


@pytest.mark.slow
def test_cli_converts_and_reports_usage_errors(tmp_path):
    env = {k: v for k, v in os.environ.items()}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [
        sys.executable,
        "-m",
        "hmsa_keras.cli.convert",
        f"--checkpoint={C.Golden().state_dict_path}",
        f"--output_dir={tmp_path / 'out'}",
    ]
    bad = subprocess.run(cmd + ["--dataset=cityscapes"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "but cityscapes has 19" in bad.stderr
    ok = subprocess.run(
        cmd + ["--dataset=cityscapes", "--num_classes=3"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "mscale checkpoint: 1587 tensors mapped, 0 unused, 0 layers at their initialisation"
        in ok.stdout
    )
    assert os.path.isfile(tmp_path / "out" / "best.keras")
