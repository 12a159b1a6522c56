"""hmsa_keras: Hierarchical Multi-Scale Attention semantic segmentation in Keras 3."""

import os
import re

from setuptools import find_packages, setup

# CPU by default (the pinned stack); GPU machines:
# HMSA_TENSORFLOW="tensorflow[and-cuda]" pip install .
TENSORFLOW = os.environ.get("HMSA_TENSORFLOW", "tensorflow-cpu")

version = re.search(r'__version__ = "([^"]+)"', open("hmsa_keras/__init__.py").read()).group(1)

setup(
    name="hmsa_keras",
    version=version,
    description=(
        "Hierarchical Multi-Scale Attention (Tao et al. 2020) semantic segmentation in Keras 3"
    ),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hmsa_keras", "hmsa_keras.*"]) + ["hmsa_keras.recipes"],
    # the flagfile recipes live in the top-level flags/ folder and install as hmsa_keras.recipes
    package_dir={"hmsa_keras.recipes": "flags"},
    package_data={"hmsa_keras.recipes": ["*.cfg"]},
    install_requires=[
        f"{TENSORFLOW}>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<2.4",
        "tensorflow-datasets>=4.9,<5",
        "ai-edge-litert>=1.2,<3",
        "pillow>=10,<14",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "convert": ["torch>=2.1"],  # hmsa-convert reading .pth checkpoints (docs/hrnet_ocr.md)
        # Keras' JAX backend (docs/backends.md); tests/test_backends.py skips without it
        "jax": ["jax[cpu]>=0.10,<0.11"],
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "cityscapesscripts>=2.2,<3",
            "importlib_resources>=6",
            "ruff>=0.17,<0.18",  # the README's test command lints first (ruff.toml)
        ],
    },
    entry_points={
        "console_scripts": [
            "hmsa-train=hmsa_keras.cli.train:run",
            "hmsa-eval=hmsa_keras.cli.eval:run",
            "hmsa-predict=hmsa_keras.cli.predict:run",
            "hmsa-autolabel=hmsa_keras.cli.predict:run_autolabel",
            "hmsa-export=hmsa_keras.cli.export:run",
            "hmsa-data=hmsa_keras.cli.data:run",
            "hmsa-convert=hmsa_keras.cli.convert:run",
        ],
    },
)
