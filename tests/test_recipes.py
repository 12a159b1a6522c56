"""The flagfile recipes of flags/ say which reference recipe they follow and match it.

Each recipe's header has a line ``# Reference recipe: none ...`` or ``# Reference recipe:
scripts/<name>.yml[, scripts/<name>.yml] ...`` naming files of NVIDIA/semantic-segmentation at
commit 7726b144c2cc0b8e09c67eabb78f027efdf3f0fa, and a ``# Deviations`` list of bullets
``#   - <keys>: <reason>``. A recipe that follows a reference recipe must set every value below
(the yml's hyper-parameters, completed with the reference train.py / config.py defaults it relies
on) or list the flag among its deviations; it must use the reference's optimiser semantics
(coupled weight decay, per-epoch poly) outright. Parses the recipe text, not absl, so recipes may
use flags the command line does not define yet.
"""

import dataclasses
import pathlib
import re

import pytest

from hmsa_keras.config import DataConfig, ModelConfig, TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "flags").glob("*.cfg"))
REFERENCE_COMMIT = "7726b144c2cc0b8e09c67eabb78f027efdf3f0fa"
SET = object()  # "must be given" (a path the user supplies)

# Shared by every reference training recipe: train.py defaults (momentum, weight_decay,
# scale_min/max, color_aug, class_uniform_pct / tile, no warm-up), loss/optimizer.py (SGD
# coupled decay, LambdaLR poly stepped per epoch), torch.distributed.launch on 8 GPUs with
# --syncbn --apex --fp16.
_TRAIN = dict(
    momentum=0.9,
    weight_decay=1e-4,
    weight_decay_mode="coupled",
    lr_schedule_granularity="epoch",
    warmup_steps=0,
    scale_min=0.5,
    scale_max=2.0,
    hflip=True,
    color_jitter=0.25,
    class_uniform_fraction=0.5,
    class_uniform_tile=1024,
    strategy="mirrored",
    precision="mixed_float16",
    bn_momentum=0.9,
)
# ocrnet.HRNet_Mscale: HRNetV2-W48 (MODEL.OCR_EXTRA), OCR 512/256, OCR_ALPHA 0.4, training
# scales MSCALE_LO_SCALE 0.5 and 1.0, hierarchical fusion.
_HRNET_OCR = dict(
    trunk="hrnetv2_w48",
    head="ocr",
    hrnet_width=48,
    ocr_mid_channels=512,
    ocr_key_channels=256,
    ocr_dropout=0.05,
    aux_head=True,
    aux_weight=0.4,
    fusion="hierarchical",
    train_scales=(0.5, 1.0),
    init_from=SET,
)
REFERENCE_RECIPES = {
    "train_cityscapes.yml": dict(
        _TRAIN,
        **_HRNET_OCR,
        dataset="cityscapes",
        crop_size=(1024, 2048),
        batch_size=1,
        reference_batch_size=8,
        learning_rate=5e-3,
        lr_power=2.0,
        epochs=175,
        loss="rmi",
        scale_loss_weight=0.05,
        blur_prob=0.0,
        pre_size=None,
    ),
    "eval_cityscapes.yml": dict(eval_scales=(0.5, 1.0, 2.0), eval_long_edge=None),
    "train_mapillary.yml": dict(
        _TRAIN,
        **_HRNET_OCR,
        dataset="mapillary",
        pre_size=2177,
        crop_size=(1024, 1024),
        batch_size=2,
        reference_batch_size=16,
        learning_rate=5e-3,
        lr_power=1.0,
        epochs=200,
        loss="rmi",
        scale_loss_weight=0.0,
        blur_prob=1.0,
    ),
    "eval_mapillary.yml": dict(
        eval_scales=(0.25, 0.5, 1.0, 2.0), eval_long_edge=2177, eval_upscale=True
    ),
    # deepv3.DeepV3PlusW38: single-scale DeepLabV3+ on WideResNet-38, cross-entropy
    "train_cityscapes_deepv3.yml": dict(
        _TRAIN,
        dataset="cityscapes",
        trunk="wrn38",
        head="deeplabv3plus",
        aux_head=False,
        fusion="single",
        crop_size=(800, 800),
        batch_size=1,
        reference_batch_size=8,
        learning_rate=5e-3,
        lr_power=2.0,
        epochs=175,
        loss="ce",
        scale_loss_weight=0.0,
        blur_prob=0.0,
        pre_size=None,
    ),
}
# Config fields added with the recipes, and their defaults.
NEW_FIELDS = dict(
    weight_decay_mode="decoupled",
    lr_schedule_granularity="iteration",
    init_from=None,
    head=None,
    hrnet_width=48,
    ocr_mid_channels=512,
    ocr_key_channels=256,
    ocr_dropout=0.05,
    pre_size=None,
    eval_upscale=False,
)
CLI_ONLY = dict(head_channels=256, export_dir=None, export_scales=(0.5, 1.0))


def _defaults():
    """Every known flag name -> default: the config schema's fields, then the names above
    for fields the schema does not have yet."""
    out = {
        f.name: f.default
        for cls in (ModelConfig, DataConfig, TrainConfig)
        for f in dataclasses.fields(cls)
    }
    for name, value in {**NEW_FIELDS, **CLI_ONLY}.items():
        out.setdefault(name, value)
    return out


DEFAULTS = _defaults()
MULTI = {
    f.name
    for cls in (ModelConfig, DataConfig, TrainConfig)
    for f in dataclasses.fields(cls)
    if f.metadata.get("kind") == "multi"
}


def _value(text):
    if "," in text:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclasses.dataclass
class Recipe:
    path: pathlib.Path
    header: list
    flags: dict
    references: list  # reference yml names; [] = none
    deviations: set

    def get(self, key):
        value = self.flags.get(key, DEFAULTS.get(key))
        if key == "head" and value is None:  # each trunk's own head
            value = "ocr" if str(self.get("trunk")).startswith("hrnet") else "deeplabv3plus"
        return value


def parse(path):
    header, flags, in_header = [], {}, True
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            assert in_header, f"{path.name}:{n}: comments belong in the header"
            header.append(line)
            continue
        in_header = False
        m = re.fullmatch(r"--(\w+)(?:=(.*))?", line)
        assert m, f"{path.name}:{n}: not a --flag[=value] line: {line!r}"
        name, value = m.group(1), m.group(2)
        if value is None:
            name, value = (
                (name[2:], False)
                if name.startswith("no") and name[2:] in DEFAULTS
                else (name, True)
            )
        else:
            value = _value(value)
        if (
            name in MULTI
        ):  # repeatable flags (--freeze=trunk --freeze=seg_head) collect their values
            flags[name] = flags.get(name, ()) + (value,)
            continue
        assert name not in flags, f"{path.name}:{n}: --{name} given twice"
        flags[name] = value
    lines = [h for h in header if h.startswith("# Reference recipe:")]
    assert len(lines) == 1, f"{path.name}: needs exactly one '# Reference recipe:' header line"
    rest = lines[0].split(":", 1)[1].strip()
    references = [] if rest.startswith("none") else re.findall(r"scripts/([\w.]+\.yml)", rest)
    deviations, block = set(), False
    for h in header:
        if h.startswith("# Deviations"):
            block = True
        elif block and (m := re.match(r"#\s+- ([^:]+):", h)):
            deviations |= {k.strip() for k in m.group(1).split(",")}
        elif block and not re.match(r"#\s{3,}", h):
            block = False
    return Recipe(path, header, flags, references, deviations)


def _same(a, b):
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, tuple)
            and isinstance(b, tuple)
            and len(a) == len(b)
            and all(float(x) == float(y) for x, y in zip(a, b))
        )
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


ids = [p.stem for p in RECIPES]


def test_recipes_found():
    assert {"quickstart", "cityscapes_hrnet_ocr", "mapillary_hrnet_ocr"} <= set(ids)


@pytest.mark.parametrize("path", RECIPES, ids=ids)
def test_header_names_a_reference_recipe_or_none(path):
    recipe = parse(path)
    text = "\n".join(recipe.header)
    if recipe.references:
        unknown = set(recipe.references) - set(REFERENCE_RECIPES)
        assert not unknown, f"{path.name}: {unknown} is not a reference recipe this test knows"
        assert REFERENCE_COMMIT in text, f"{path.name}: name the reference commit"
    else:
        assert re.search(r"# Reference recipe: none \(.+", text), (
            f"{path.name}: say why there is no reference recipe"
        )
    unknown_flags = set(recipe.flags) - set(DEFAULTS)
    assert not unknown_flags, f"{path.name}: unknown flag(s) {sorted(unknown_flags)}"


@pytest.mark.parametrize(
    "path",
    [p for p in RECIPES if parse(p).references],
    ids=[p.stem for p in RECIPES if parse(p).references],
)
def test_reference_recipe_values_match_or_are_listed_deviations(path):
    recipe = parse(path)
    expected = {}
    for name in recipe.references:
        expected.update(REFERENCE_RECIPES[name])
    # the optimiser semantics are not negotiable, and must be written out, not defaulted
    for key in ("weight_decay_mode", "lr_schedule_granularity"):
        assert recipe.flags.get(key) == expected[key], f"{path.name}: needs --{key}={expected[key]}"
        assert key not in recipe.deviations
    wrong, stale = [], []
    for key, want in expected.items():
        got = recipe.get(key)
        ok = got is not None if want is SET else _same(got, want)
        if not ok and key not in recipe.deviations:
            wrong.append(f"--{key}={got!r} (reference {'a path' if want is SET else repr(want)})")
        if ok and key in recipe.deviations:
            stale.append(key)
    assert not wrong, (
        f"{path.name}: differs from {recipe.references} without a listed "
        "deviation: " + "; ".join(wrong)
    )
    assert not stale, f"{path.name}: lists {stale} as deviations but matches the reference there"
    # the global batch the LR is quoted at is the reference's (per-replica batch x 8 GPUs)
    assert recipe.get("reference_batch_size") == recipe.get("batch_size") * 8


def test_quickstart_keeps_the_project_defaults():
    """Only the quickstart's header changed this round: it still trains with the defaults."""
    flags = parse(REPO / "flags" / "quickstart.cfg").flags
    assert "weight_decay_mode" not in flags and "lr_schedule_granularity" not in flags
    assert DEFAULTS["weight_decay_mode"] == "decoupled"
    assert DEFAULTS["lr_schedule_granularity"] == "iteration"


def test_parser_catches_an_unlisted_deviation(tmp_path):
    """The check above fails when a reference recipe's value changes without a reason."""
    text = (REPO / "flags" / "cityscapes_hrnet_ocr.cfg").read_text()
    bad = tmp_path / "bad.cfg"
    bad.write_text(text.replace("--lr_power=2.0", "--lr_power=1.0"))
    with pytest.raises(AssertionError, match="lr_power"):
        test_reference_recipe_values_match_or_are_listed_deviations(bad)
    bad.write_text(text.replace("--weight_decay_mode=coupled", "--weight_decay_mode=decoupled"))
    with pytest.raises(AssertionError, match="weight_decay_mode"):
        test_reference_recipe_values_match_or_are_listed_deviations(bad)
