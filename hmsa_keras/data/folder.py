"""Generic folder dataset (also the format of auto-labelled pseudo-label sets).

Layout::

    data_dir/classes.json
    data_dir/{split}/images/<stem>.{png,jpg,jpeg,...}
    data_dir/{split}/labels/<stem>.png        single-channel (8/16-bit or palette) class ids

``classes.json``::

    {"names": ["background", "road", ...],
     "colors": [[0, 0, 0], [128, 64, 128], ...],      # optional, one RGB per class
     "ignore_label": 255}                              # optional, default 255

Label values ``0 .. len(names)-1`` are classes, ``ignore_label`` is ignored
(mapped to 255), anything else is an error.

A pseudo-label set (``DataConfig.pseudo_label_dir``) has the same format,
either with a ``{train_split}/`` level or directly ``images/`` + ``labels/``;
its ``classes.json`` is optional and, if present, must list the same names.
"""

from __future__ import annotations

import colorsys
import json
import os

from hmsa_keras.data.io import DataError, pair_by_stem
from hmsa_keras.data.labels import IGNORE, DatasetInfo, lut_from_ignore

CLASS_FILE = "classes.json"


def default_colors(n):
    """Distinct colours for classes without any given."""
    return [
        tuple(int(255 * v) for v in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9))
        for i in range(n)
    ]


def read_classes(root, name="folder") -> DatasetInfo:
    path = os.path.join(root, CLASS_FILE)
    try:
        with open(path) as f:
            spec = json.load(f)
        names = [str(n) for n in spec["names"]]
    except FileNotFoundError:
        raise DataError(
            f"{path}: class file does not exist (see docs/data.md, folder format)"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not a valid class file ({exc.__class__.__name__}: {exc})"
        ) from None
    if not names or len(names) > 255:
        raise DataError(f"{path}: 'names' must list 1..255 classes, got {len(names)}")
    colors = spec.get("colors") or default_colors(len(names))
    if len(colors) != len(names) or any(len(c) != 3 for c in colors):
        raise DataError(f"{path}: 'colors' must hold one [r, g, b] per class ({len(names)})")
    ignore = int(spec.get("ignore_label", IGNORE))
    if ignore < len(names) or ignore > 65535:
        raise DataError(
            f"{path}: ignore_label {ignore} collides with a class id or is out of range"
        )
    lut = lut_from_ignore(len(names), ignore) if ignore < 256 else _wide_lut(len(names), ignore)
    return DatasetInfo(
        name, len(names), IGNORE, names, [tuple(int(v) for v in c) for c in colors], lut
    )


def _wide_lut(num_classes, ignore):
    from hmsa_keras.data.labels import identity_lut

    return identity_lut(num_classes, ignore_values=(ignore, IGNORE), size=65536)


def dataset_info(config) -> DatasetInfo:
    return read_classes(config.data_dir)


def split_dir(root, split):
    """``root/split`` if it exists, else ``root`` itself when it holds images/ (pseudo sets)."""
    candidate = os.path.join(root, split)
    if not os.path.isdir(candidate) and os.path.isdir(os.path.join(root, "images")):
        return root
    return candidate


def list_pairs_in(root, split):
    folder = split_dir(root, split)
    return pair_by_stem(os.path.join(folder, "images"), os.path.join(folder, "labels"))


def list_pairs(config, split):
    return list_pairs_in(config.data_dir, split)


def pseudo_info(config, main: DatasetInfo) -> DatasetInfo:
    """Class table of the pseudo-label set: its own classes.json (must list the same
    names as ``main``) or, without one, ``main``'s classes stored as training ids."""
    root = config.pseudo_label_dir
    if not os.path.isfile(os.path.join(root, CLASS_FILE)):
        # Auto-labellers write training ids (0..K-1) with 255 = ignore.
        return DatasetInfo(
            "pseudo",
            main.num_classes,
            IGNORE,
            main.class_names,
            main.colors,
            lut_from_ignore(main.num_classes, IGNORE),
        )
    info = read_classes(root, "pseudo")
    if info.class_names != main.class_names:
        raise DataError(
            f"{os.path.join(root, CLASS_FILE)}: pseudo-label classes {info.class_names} "
            f"differ from the dataset's {main.class_names}"
        )
    return info


class PseudoLabelWriter:
    """Writes auto-labels as a folder dataset (the format above): ``root/<split>/images/``
    (the input files, copied), ``root/<split>/labels/<stem>.png`` (class ids; pixels whose top
    probability is below ``confidence`` -> the ignore label), ``root/classes.json`` and, on
    :meth:`close`, ``root/autolabel.json`` (per image, the share of ignored pixels).

    Raises DataError when ``root`` already holds a ``classes.json`` with other classes.
    Source: the auto-labelling of arXiv 2005.10821, auto-labelling (threshold 0.5).
    """

    def __init__(self, root, split, class_names, colors, confidence):
        self.root, self.confidence = root, float(confidence)
        self.images = os.path.join(root, split, "images")
        self.labels = os.path.join(root, split, "labels")
        path = os.path.join(root, CLASS_FILE)
        spec = {
            "names": list(class_names),
            "colors": [list(map(int, c)) for c in colors],
            "ignore_label": IGNORE,
        }
        if os.path.isfile(path):
            with open(path) as f:
                existing = json.load(f)
            if existing.get("names") != spec["names"]:
                raise DataError(
                    f"{path} lists classes {existing.get('names')}, the model's are "
                    f"{spec['names']}: use another folder"
                )
        os.makedirs(self.images, exist_ok=True)
        os.makedirs(self.labels, exist_ok=True)
        if not os.path.isfile(path):
            with open(path, "w") as f:
                json.dump(spec, f, indent=2)
        self.stats = []

    def write(self, image_path, probabilities):
        """Writes the pseudo-label of ``image_path`` from its probabilities ``[H, W, K]``."""
        import shutil

        import numpy as np
        from PIL import Image

        classes = probabilities.argmax(-1).astype(np.uint8)
        low = probabilities.max(-1) < self.confidence
        classes[low] = IGNORE
        stem, ext = os.path.splitext(os.path.basename(image_path))
        shutil.copyfile(image_path, os.path.join(self.images, stem + ext.lower()))
        Image.fromarray(classes, mode="L").save(os.path.join(self.labels, stem + ".png"))
        self.stats.append(
            {"image": os.path.abspath(image_path), "ignored_share": float(low.mean())}
        )

    def close(self, meta):
        with open(os.path.join(self.root, "autolabel.json"), "w") as f:
            json.dump(dict(meta, confidence=self.confidence, images=self.stats), f, indent=2)
