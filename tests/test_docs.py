"""The documentation says what the code does: every command line in README.md, docs/*.md and
export/README.md uses flags its tool defines, relative links point at files that exist, the
README opens with the two commands CI runs, and its Python training snippet runs.

Commands are read from fenced code blocks (except ```python) and from inline code spans that
start with a tool: ``hmsa-train`` ... ``hmsa-convert`` (checked against the tool's absl
``FlagValues``, as ``tests/test_config_schema.py`` maps them), ``python -m hmsa_keras.<module>``
and ``python export/<script>.py`` (checked against the ``add_argument`` options of the
module's source).
"""

import re
import shlex

import pytest

from tests.conftest import REPO
from tests.helpers.common import TOOL_NAMES, cli_tools

DOCS = [REPO / "README.md", REPO / "export" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOOLS = TOOL_NAMES
# absl flags every tool accepts without defining them
ABSL_BUILTIN = {"flagfile", "help", "helpfull", "helpshort", "helpxml", "undefok"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
FENCE = re.compile(r"^(```+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.S | re.M)


def _rel(path):
    return str(path.relative_to(REPO))


def _split_fences(text):
    """(code blocks as (language, body), the text outside them)."""
    blocks = [(m.group(2).strip().lower(), m.group(3)) for m in FENCE.finditer(text)]
    return blocks, FENCE.sub("", text)


def _tokens(line):
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in an illustration: split on blanks
        return line.split()


def _commands_in(line):
    """Each command of a shell line: its token list from the program name on."""
    command = []
    for token in _tokens(line) + [";"]:
        if token in SEPARATORS:
            while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                command.pop(0)  # VAR=value prefixes
            if command:
                yield command
            command = []
        else:
            command.append(token)


def _program(command):
    """The documented program a command runs, or None: a tool name, ``-m hmsa_keras.X`` or
    ``export/X.py``."""
    head = command[0]
    if head in TOOLS:
        return head
    if head in ("python", "python3") and len(command) > 1:
        if command[1] == "-m" and len(command) > 2 and command[2].startswith("hmsa_keras."):
            return "-m " + command[2]
        if re.fullmatch(r"export/\w+\.py", command[1]):
            return command[1]
    return None


def _shell_lines(body):
    lines, current = [], ""
    for raw in body.splitlines():
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def documented_commands():
    """[(file, program, command text, [flag names])] for every documented command."""
    found = []
    for path in DOCS:
        blocks, prose = _split_fences(path.read_text())
        snippets = [
            line for lang, body in blocks if lang != "python" for line in _shell_lines(body)
        ]
        snippets += [
            " ".join(span.split())
            for span in re.findall(r"`([^`]+)`", prose)
            if span.split() and (span.split()[0] in TOOLS or span.startswith("python"))
        ]
        for line in snippets:
            for command in _commands_in(line):
                program = _program(command)
                if program is None:
                    continue
                names = []
                for token in command[1:]:
                    token = token.strip("[]")
                    if token.startswith("--") and len(token) > 2:
                        names.append(token[2:].split("=", 1)[0])
                found.append((_rel(path), program, " ".join(command), names))
    return found


def _absl_accepts(flag_values, name):
    if name in ABSL_BUILTIN or name in flag_values:
        return True
    return name.startswith("no") and name[2:] in flag_values and flag_values[name[2:]].boolean


def _argparse_options(program):
    """The --options a script or module declares with argparse's add_argument."""
    if program.startswith("-m "):
        module = program[3:].split(".")
        path = REPO.joinpath(*module).with_suffix(".py")
    else:
        path = REPO / program
    assert path.is_file(), f"{program}: no such file {_rel(path)}"
    source = path.read_text()
    option = r"""add_argument\(\s*(?:["']-\w["']\s*,\s*)?["']--([\w-]+)["']"""
    declared = set(re.findall(option, source))
    return declared | {"help"}


COMMANDS = documented_commands()


def test_the_docs_document_commands():
    programs = {program for _, program, _, _ in COMMANDS}
    assert set(TOOLS) <= programs, f"no documented command for {set(TOOLS) - programs}"
    assert len(COMMANDS) > 50


@pytest.mark.parametrize("tool", TOOLS)
def test_documented_tool_commands_use_defined_flags(tool):
    flag_values = cli_tools()[tool].flags
    wrong = [
        f"{path}: `{text}`: --{name}"
        for path, program, text, names in COMMANDS
        if program == tool
        for name in names
        if not _absl_accepts(flag_values, name)
    ]
    assert not wrong, "flags the tool does not define:\n" + "\n".join(wrong)


def test_documented_script_commands_use_defined_options():
    wrong = []
    for path, program, text, names in COMMANDS:
        if program in TOOLS:
            continue
        options = _argparse_options(program)
        wrong += [f"{path}: `{text}`: --{name}" for name in names if name not in options]
    assert not wrong, "options the script does not define:\n" + "\n".join(wrong)


def test_documented_flagfiles_and_recipes_exist():
    missing = []
    for path, _, text, _ in COMMANDS:
        for match in re.finditer(r"--flagfile=(flags/[\w.]+)", text):
            if not (REPO / match.group(1)).is_file():
                missing.append(f"{path}: {match.group(1)}")
        for match in re.finditer(r"--recipe=([a-z0-9_]+)(?![A-Za-z])", text):
            if not (REPO / "flags" / f"{match.group(1)}.cfg").is_file():
                missing.append(f"{path}: --recipe={match.group(1)}")
    assert not missing, missing


def _anchors(path):
    """GitHub's anchors of a Markdown file's headings."""
    _, prose = _split_fences(path.read_text())
    slugs = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_relative_links_point_at_existing_files(path):
    _, prose = _split_fences(path.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = path.parent / file if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{_rel(path)}: links to missing files or headings {broken}"


# ---------------------------------------------------------------------------- README specifics
README = (REPO / "README.md").read_text()


def _readme_bash_blocks():
    return [body.strip() for lang, body in _split_fences(README)[0] if lang in ("bash", "sh")]


def test_readme_opens_with_the_quickstart_and_the_ci_test_command():
    first, second = _readme_bash_blocks()[:2]
    assert first == "pip install -e . && hmsa-train --flagfile=flags/quickstart.cfg"
    assert second == 'pip install -e ".[test]" && ruff check . && python -m pytest'
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == second, ".ci/run must run the README's test command"
    assert 'python -m pytest -m "not slow"' in README


def test_readme_layout_table_names_existing_paths():
    section = README.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `([^`]+)`", section, re.M)
    assert len(paths) > 10
    missing = [p for p in paths if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"README layout table: no such path {missing}"


def readme_python_snippet():
    """The README's Python training snippet: the ```python block holding the settings markers."""
    blocks = [body for lang, body in _split_fences(README)[0] if lang == "python"]
    snippets = [b for b in blocks if "# --- settings" in b and "# --- end of settings ---" in b]
    assert len(snippets) == 1, "README.md: one ```python block with the settings markers"
    return snippets[0]


def test_readme_python_snippet_compiles_and_uses_public_names():
    """Fast tier: the snippet parses, and every ``hmsa_keras.X`` it calls exists."""
    import hmsa_keras

    code = readme_python_snippet()
    compile(code, "README.md", "exec")
    called = set(re.findall(r"hmsa_keras\.(\w+)\(", code))
    missing = [name for name in called if not hasattr(hmsa_keras, name)]
    assert not missing, missing


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    """README.md's Python training snippet, executed as written except its settings block (a
    tiny synthetic dataset and model, two steps): build, compile, fit, segment, save, reload."""
    from tests.helpers.common import TINY

    code = readme_python_snippet()
    head, rest = code.split("# --- settings", 1)
    tail = rest.split("# --- end of settings ---", 1)[1]
    tiny = (
        f"RUN = {str(tmp_path / 'run')!r}\n"
        "DATA = hmsa_keras.DataConfig(dataset='synthetic', synthetic_train_size=4,\n"
        "                             synthetic_val_size=2, synthetic_image_size=(64, 64),\n"
        "                             crop_size=(48, 48))\n"
        f"MODEL = dict({', '.join(f'{k}={v!r}' for k, v in TINY.items())})\n"
        "BATCH, EPOCHS, STEPS_PER_EPOCH = 2, 1, 2\n"
    )
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(head + tiny + tail, "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out["classes"].shape == namespace["image"].shape[:2]
    assert (tmp_path / "run" / "model.keras").is_file()
    assert namespace["model"].num_classes == namespace["info"].num_classes
