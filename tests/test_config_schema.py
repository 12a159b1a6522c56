"""The config dataclasses are the one schema: every field is a flag of the tools, round-trips
through flags and config.json, and one recipe serves every tool."""

import dataclasses
import json
import pathlib
import typing

import pytest
from absl import app, flags

from hmsa_keras import config as C
from hmsa_keras.cli import schema
from tests.conftest import REPO
from tests.helpers.common import TOOL_NAMES, cli_tools

ALL_CONFIGS = C.RUN_CONFIGS + (
    C.EvalConfig,
    C.PredictConfig,
    C.ExportConfig,
    C.DataToolConfig,
    C.ConvertConfig,
)
RECIPES = sorted(pathlib.Path(REPO / "flags").glob("*.cfg"))


def _other_value(spec):
    """A valid value of the field that differs from its default."""
    if spec.choices:
        return (
            next(c for c in spec.choices if c != spec.default)
            if spec.kind not in ("multi", "list")
            else tuple(spec.choices[:1])
            if spec.default != tuple(spec.choices[:1])
            else tuple(spec.choices[1:2])
        )
    if spec.base is bool:
        return not spec.default
    if spec.kind == "scales":
        return (0.25, 1.0, 2.0)
    if spec.kind == "hw":
        return (96, 160)
    if spec.kind == "floats":
        return (0.5, 2.0, 1.0)
    if spec.base is int:
        return (spec.default or 0) + 3
    if spec.base is float:
        return min((spec.default or 0.0) + 0.125, spec.upper if spec.upper is not None else 1e9)
    return f"value_of_{spec.name}"


def _as_flag(spec, value):
    if spec.base is bool:
        return [f"--{spec.name}" if value else f"--no{spec.name}"]
    if spec.kind == "multi":
        return [f"--{spec.name}={v}" for v in value]
    if spec.kind == "hw":
        return [f"--{spec.name}={value[0]}x{value[1]}"]
    if isinstance(value, tuple):
        return [f"--{spec.name}={','.join(str(v) for v in value)}"]
    return [f"--{spec.name}={value}"]


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_a_flag_with_help(cls):
    fv = flags.FlagValues()
    defined = schema.define_flags(cls, fv)
    for field in dataclasses.fields(cls):
        assert field.name in defined and field.name in fv, field.name
        assert len(field.metadata["help"]) > 10, field.name
        assert field.metadata["help"] in fv[field.name].help
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_round_trips_through_flags_and_json(cls):
    """Each field set to a non-default value on the command line comes back in the dataclass,
    and the dataclass comes back unchanged from its JSON."""
    specs = schema.field_specs(cls)
    want = {s.name: _other_value(s) for s in specs}
    argv = ["prog"] + [arg for s in specs for arg in _as_flag(s, want[s.name])]
    fv = flags.FlagValues()
    schema.define_flags(cls, fv)
    fv(argv)
    got = schema.read_flags(cls, fv)
    for spec in specs:
        assert getattr(got, spec.name) == want[spec.name], spec.name
        assert getattr(got, spec.name) != spec.default, spec.name
    raw = json.loads(C.to_json(got))[cls.__name__]
    assert C.from_dict(cls, raw) == got


def test_run_configs_round_trip_through_config_json(tmp_path):
    from hmsa_keras.training.run_config import RunConfig, resolve

    model = C.ModelConfig(trunk="resnet50", train_scales=(0.5, 1.0, 2.0), aux_head=True)
    data = C.DataConfig(crop_size=(64, 96), eval_long_edge=512, class_uniform_tile=1024)
    train = C.TrainConfig(
        batch_size=3,
        reference_batch_size=16,
        epochs=2,
        class_weights=(1.0, 2.0, 3.0),
        freeze=("trunk",),
        eval_scales=(0.25, 0.5, 1.0),
        eval_flip=True,
    )
    run = resolve(model, data, train, num_replicas=2, num_classes=3, train_examples=40)
    assert run.model.num_classes == 3 and run.model.sync_bn is True
    assert run.resolved.global_batch_size == 6 and run.resolved.steps_per_epoch == 6
    assert run.resolved.total_steps == 12 and run.resolved.learning_rate == pytest.approx(
        0.01 * 6 / 16
    )
    run.write(str(tmp_path))
    assert RunConfig.read(str(tmp_path)) == run
    assert C.read_run_config(str(tmp_path)) == (run.model, run.data, run.train)


def test_resolve_checks_and_derives():
    from hmsa_keras.training.run_config import ConfigError, resolve

    base = (C.ModelConfig(), C.DataConfig(), C.TrainConfig())
    one = resolve(*base, num_replicas=1, num_classes=5, train_examples=3)
    assert one.model.sync_bn is False and one.resolved.steps_per_epoch == 1  # at least one step
    forced = resolve(dataclasses.replace(base[0], sync_bn=True), *base[1:], 1, 5, 3)
    assert forced.model.sync_bn is True
    with pytest.raises(ConfigError, match="--num_classes=4 but dataset 'synthetic' has 5"):
        resolve(dataclasses.replace(base[0], num_classes=4), *base[1:], 1, 5, 3)
    with pytest.raises(ConfigError, match="--train_scales must include 1.0"):
        resolve(dataclasses.replace(base[0], train_scales=(0.5, 2.0)), *base[1:], 1, 5, 3)
    with pytest.raises(ConfigError, match="--class_weights lists 2 weights"):
        resolve(base[0], base[1], dataclasses.replace(base[2], class_weights=(1.0, 2.0)), 1, 5, 3)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.TrainConfig().learning_rate = 1.0


def test_a_new_field_is_one_line():
    """A dataclass declared with config.option gets its flag, help, bounds and parsing for free."""

    @dataclasses.dataclass(frozen=True)
    class Extra:
        size: typing.Tuple[int, int] = C.option((8, 16), "A size.", kind="hw")
        ratio: float = C.option(0.5, "A ratio.", lower=0.0, upper=1.0)

    fv = flags.FlagValues()
    schema.define_flags(Extra, fv)
    fv(["prog", "--size=32", "--ratio=0.25"])
    assert schema.read_flags(Extra, fv) == Extra(size=(32, 32), ratio=0.25)
    with pytest.raises(flags.IllegalFlagValueError, match="ratio"):
        fv(["prog", "--ratio=2"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--crop_size=a,b"], "--crop_size: expected HxW"),
        (["--train_scales=0.5,0"], "--train_scales: every scale must be a finite number > 0"),
        (["--eval_scales=1,1"], "--eval_scales: scales must be distinct"),
        (["--class_weights=1,-2"], "--class_weights: every value must be >= 0"),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    from hmsa_keras.cli import train

    with pytest.raises(app.UsageError, match=message):
        train.configs_from_argv(argv)


def test_shorthand_and_aliases_of_old_flagfiles():
    from hmsa_keras.cli import train

    model, _, t = train.configs_from_argv(
        ["--head_channels=24", "--decoder_channels=8", "--export_scales=1,2", "--sync_bn"]
    )
    assert (model.aspp_channels, model.decoder_channels, model.attention_channels) == (24, 8, 24)
    assert t.eval_scales == (1.0, 2.0) and model.sync_bn is True
    # zero_is_none: the old "0 = unset" values
    _, d, t = train.configs_from_argv(
        ["--steps_per_epoch=0", "--eval_long_edge=0", "--reference_batch_size=0"]
    )
    assert t.steps_per_epoch is None and d.eval_long_edge is None and t.reference_batch_size is None


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize(
    "tool_name",
    TOOL_NAMES,
)
def test_one_recipe_serves_every_tool(recipe, tool_name):
    """Each tool takes from a recipe what concerns it and ignores the training-only flags."""
    tool = cli_tools()[tool_name]
    positional = ["check"] if tool_name == "hmsa-data" else []
    tool.parse([tool_name, f"--flagfile={recipe}", *positional])
    text = recipe.read_text()
    if "--model_dir=" in text and "model_dir" in tool.flags:
        assert tool.given("model_dir")
    if tool_name != "hmsa-train":
        assert "learning_rate" not in tool.flags  # a training-only field: dropped, not an error
    if tool_name == "hmsa-eval" and "--eval_scales=" in text:
        assert tool.given("eval_scales")


def test_command_line_flags_must_be_the_tools_own():
    from hmsa_keras.cli import eval

    with pytest.raises(app.UsageError, match="learning_rate"):
        eval.TOOL.parse(["hmsa-eval", "--learning_rate=0.1"])
    with pytest.raises(app.UsageError, match="scalez"):
        eval.TOOL.parse(["hmsa-eval", "--scalez=1"])


def test_recipe_flag_overrides_and_command_line_order(tmp_path):
    from hmsa_keras.cli import train

    recipe = tmp_path / "r.cfg"
    recipe.write_text("# a recipe\n--epochs=7\n--alpha=0.5\n")
    model, _, t = train.configs_from_argv([f"--flagfile={recipe}", "--epochs=2"])
    assert t.epochs == 2 and model.alpha == 0.5


@pytest.mark.parametrize(
    "tool_name",
    TOOL_NAMES,
)
@pytest.mark.parametrize("help_flag", ["--help", "--helpfull", "--helpshort"])
def test_help_exits_zero_and_lists_the_tools_own_flags(tool_name, help_flag, capsys):
    tool = cli_tools()[tool_name]
    with pytest.raises(SystemExit) as exit_info:
        tool.run(lambda argv: 1, [tool_name, help_flag])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    own = (
        [f.name for f in dataclasses.fields(tool.options)]
        if tool.options
        else ["learning_rate", "trunk"]
    )
    for name in own:
        assert f"--{name}:" in out, name
    assert "--tpu" not in out and "tensor_tracer" not in out


@pytest.mark.slow
def test_console_scripts_help_in_a_fresh_process():
    """The installed console scripts answer --help with status 0, without importing TensorFlow."""
    import shutil
    import subprocess

    for name in cli_tools():
        exe = shutil.which(name)
        if exe is None:
            pytest.skip(f"{name} is not installed (pip install -e .)")
        proc = subprocess.run([exe, "--helpfull"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "--verbosity:" in proc.stdout and "cpu_feature_guard" not in proc.stderr, name


@pytest.mark.parametrize(
    "tool_name", ["hmsa-eval", "hmsa-predict", "hmsa-autolabel", "hmsa-export"]
)
def test_inference_tools_describe_model_dir_as_the_model_to_read(tool_name):
    """--model_dir is the model these tools read, not where training writes, and its recipe
    default (runs/quickstart) is not offered as theirs."""
    text = cli_tools()[tool_name].help_text()
    entry = text.split("  --model_dir: ", 1)[1].split("\n  --", 1)[0]
    assert entry.startswith("The model: a training directory") and "runs/quickstart" not in entry
    assert "the run's own" in text.split("  --eval_scales: ", 1)[1].split("\n  --", 1)[0]


def test_tool_names_are_the_tools():
    assert tuple(cli_tools()) == TOOL_NAMES
