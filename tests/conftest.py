"""Shared fixtures: tiny configs so the suite runs on a 2-core CPU."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"

from tests.helpers.common import TINY  # noqa: E402  (the one tiny-model definition)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny 4-class HMSA model (MobileNetV2 alpha 0.35, 16-channel heads), built once."""
    import hmsa_keras

    return hmsa_keras.build_model(num_classes=4, **TINY)


requires_camvid = pytest.mark.skipif(
    not CAMVID.is_dir(),
    reason=f"CamVid not found at {CAMVID} (it ships only in the project's ../shared)",
)
