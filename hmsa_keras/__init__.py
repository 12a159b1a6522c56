"""hmsa_keras: Hierarchical Multi-Scale Attention semantic segmentation in Keras 3.

Public API::

    import hmsa_keras
    model = hmsa_keras.build_model(num_classes=11, trunk="mobilenetv2", alpha=0.35)
    out = hmsa_keras.segment_image(model, rgb_uint8, scales=(0.5, 1.0, 2.0), flip=True,
                                   return_details=True)
    out["classes"]          # [H, W] int32 class map
    out["attention"][0.5]   # [H, W] attention of the 0.5x scale
    model = hmsa_keras.load_model("runs/quickstart")   # best checkpoint of a training run

Training from Python (docs/training.md, "Python training workflow")::

    data = hmsa_keras.DataConfig(dataset="camvid", data_dir="camvid", crop_size=(352, 480))
    train_ds = hmsa_keras.build_dataset(data, "train", training=True, batch_size=8)
    model.compile(optimizer=hmsa_keras.build_optimizer(model, 0.01, total_steps=9000))
    model.fit(train_ds, steps_per_epoch=45, epochs=200, validation_data=..., callbacks=[...])
    hmsa_keras.evaluate(model, val_ds, num_classes=11, chains=[(0.5, 1.0, 2.0)])
    hmsa_keras.train(model_cfg, data_cfg, train_cfg)      # the engine behind hmsa-train

Only the configuration classes and the functions above are imported eagerly; everything
that needs TensorFlow/Keras (the model class, datasets, optimizer, training, evaluation,
export) is imported on first use, so the command-line tools parse flags and print --help
without loading TensorFlow.
"""

__version__ = "0.1.0"

from hmsa_keras.api import build_model, load_model  # noqa: E402
from hmsa_keras.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from hmsa_keras.inference import segment_image  # noqa: E402

# name -> (module, attribute), imported by __getattr__ on first use
_LAZY = {
    "HMSA": ("hmsa_keras.models", "HMSA"),
    "build_dataset": ("hmsa_keras.data", "build_dataset"),
    "get_dataset_info": ("hmsa_keras.data", "get_dataset_info"),
    "build_optimizer": ("hmsa_keras.training.optimizer", "build_optimizer"),
    "WarmupPolyDecay": ("hmsa_keras.training.optimizer", "WarmupPolyDecay"),
    "train": ("hmsa_keras.training.trainer", "train"),
    "warm_start": ("hmsa_keras.training.warm_start", "warm_start"),
    "evaluate": ("hmsa_keras.evaluation", "evaluate"),
    "export_saved_model": ("hmsa_keras.export", "export_saved_model"),
}

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "build_model",
    "load_model",
    "segment_image",
    "__version__",
    *_LAZY,
]


def __getattr__(name):
    # Imported only when asked for: these modules load Keras (and with it the backend).
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hmsa_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
