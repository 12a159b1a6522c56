"""hmsa_keras: Hierarchical Multi-Scale Attention semantic segmentation in Keras 3.

Public API::

    import hmsa_keras
    model = hmsa_keras.build_model(num_classes=11, trunk="mobilenetv2", alpha=0.35)
    out = hmsa_keras.segment_image(model, rgb_uint8, scales=(0.5, 1.0, 2.0), flip=True,
                                   return_details=True)
    out["classes"]          # [H, W] int32 class map
    out["attention"][0.5]   # [H, W] attention of the 0.5x scale
    model = hmsa_keras.load_model("runs/quickstart")   # best checkpoint of a training run
"""

__version__ = "0.1.0"

from hmsa_keras.api import build_model, load_model  # noqa: E402
from hmsa_keras.inference import segment_image  # noqa: E402

__all__ = ["HMSA", "build_model", "load_model", "segment_image", "__version__"]


def __getattr__(name):
    # The model classes import Keras (and with it the backend): only when asked for, so that
    # the command-line tools can parse flags and print --help without loading TensorFlow.
    if name == "HMSA":
        from hmsa_keras.models import HMSA

        return HMSA
    raise AttributeError(f"module 'hmsa_keras' has no attribute {name!r}")
