"""The Cityscapes benchmark format: submission PNGs and the official evaluator.

- :class:`CityscapesSubmissionWriter`: an ``on_batch`` callback of
  :func:`hmsa_keras.evaluation.evaluate` writing single-channel labelId PNGs named
  ``<city>_<seq>_<frame>_leftImg8bit.png`` at the ground truth's size, the format of the
  Cityscapes test server and of ``cityscapesscripts``.
- :func:`official_cityscapes_eval`: runs ``cityscapesscripts``' pixel-level evaluator
  (``evaluation/evalPixelLevelSemanticLabeling.py``) on such a folder.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)


class CityscapesSubmissionWriter:
    """``on_batch`` callback writing official Cityscapes result PNGs.

    ``pairs`` lists ``(image_path, label_path)`` in dataset order (``iter_pairs``).
    Each prediction is mapped trainId -> labelId and saved as a single-channel PNG
    ``out_dir/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` of the ground truth's size
    (resized with nearest neighbour if the evaluation ran at a reduced size, e.g.
    ``eval_long_edge``; a warning says so). ``chain`` selects which chain's predictions.
    """

    def __init__(self, out_dir: str, pairs: Sequence[Tuple[str, str]], chain: int = 0):
        from hmsa_keras.data.labels import cityscapes_train_id_to_label_id

        self.out_dir = out_dir
        self.pairs = list(pairs)
        self.chain = chain
        self.index = 0
        self.resized = 0
        self.table = cityscapes_train_id_to_label_id()
        os.makedirs(out_dir, exist_ok=True)

    @staticmethod
    def output_name(image_path: str) -> Tuple[str, str]:
        """(city, file name) for an image ``<city>_<seq>_<frame>_leftImg8bit.png``."""
        base = os.path.basename(image_path)
        stem = os.path.splitext(base)[0]
        if stem.endswith("_leftImg8bit"):
            stem = stem[: -len("_leftImg8bit")]
        parts = stem.split("_")
        if len(parts) < 3:
            raise ValueError(
                f"{image_path}: not a Cityscapes image name (<city>_<seq>_<frame>_leftImg8bit.png)"
            )
        city = "_".join(parts[:-2])
        return city, f"{stem}_leftImg8bit.png"

    def __call__(self, classes_per_chain):
        from PIL import Image

        for classes in classes_per_chain[self.chain]:
            if self.index >= len(self.pairs):
                raise ValueError(
                    f"more predictions than the {len(self.pairs)} listed images: "
                    "the file list and the dataset disagree"
                )
            image_path, label_path = self.pairs[self.index]
            self.index += 1
            with Image.open(label_path) as gt:
                gt_size = gt.size  # (W, H)
            label_ids = Image.fromarray(
                self.table[np.asarray(classes, np.int64)].astype(np.uint8), mode="L"
            )
            if label_ids.size != gt_size:
                label_ids = label_ids.resize(gt_size, Image.NEAREST)
                self.resized += 1
            city, name = self.output_name(image_path)
            folder = os.path.join(self.out_dir, city)
            os.makedirs(folder, exist_ok=True)
            label_ids.save(os.path.join(folder, name))

    def close(self):
        if self.index != len(self.pairs):
            log.warning(
                "wrote %d of %d Cityscapes predictions (evaluation stopped early?)",
                self.index,
                len(self.pairs),
            )
        if self.resized:
            log.warning(
                "%d prediction(s) were resized (nearest) to the ground-truth size: the "
                "evaluation ran at a reduced size (eval_long_edge), so the official "
                "scores will differ from hmsa-eval's",
                self.resized,
            )


def official_cityscapes_eval(
    results_dir: str, dataset_dir: str, split: str = "val", quiet: bool = True
) -> dict:
    """Runs ``cityscapesscripts``' pixel-level evaluator programmatically on ``results_dir``
    against ``dataset_dir/gtFine/<split>/*/*_gtFine_labelIds.png``.

    Returns ``{"miou": ..., "class_iou": {name: iou}, "raw": <evaluator dict>}``.
    Needs ``cityscapesscripts`` (and numpy < 2.4, or the ``np.in1d`` alias set below).
    """
    import glob

    if not hasattr(np, "in1d"):  # numpy >= 2.4 removed it; the evaluator still calls it
        np.in1d = lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    args = cs.CArgs()
    for key, value in vars(cs.args).items():
        setattr(args, key, value)
    args.cityscapesPath = dataset_dir
    args.predictionPath = os.path.abspath(results_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False  # needs *_instanceIds.png
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = quiet
    args.colorized = False
    args.bold = args.nocol = ""
    args.exportFile = os.path.join(results_dir, "resultPixelLevelSemanticLabeling.json")
    gts = sorted(
        glob.glob(os.path.join(dataset_dir, "gtFine", split, "*", "*_gtFine_labelIds.png"))
    )
    if not gts:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png under {dataset_dir}/gtFine/{split}")
    preds = [cs.getPrediction(args, gt) for gt in gts]
    raw = cs.evaluateImgLists(preds, gts, args)
    class_iou = dict(raw["classScores"])
    values = [v for v in class_iou.values() if not math.isnan(v)]
    return {
        "miou": float(np.mean(values)) if values else float("nan"),
        "class_iou": class_iou,
        "raw": raw,
    }


__all__ = ["CityscapesSubmissionWriter", "official_cityscapes_eval"]
