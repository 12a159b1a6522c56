"""Running a command-line tool: one flag pattern for every ``hmsa-*`` console script.

A tool is a :class:`Tool`: its own options (a config dataclass of
:mod:`hmsa_keras.config`), the recipe fields it reads (fields of ``ModelConfig`` /
``DataConfig`` / ``TrainConfig``, e.g. ``hmsa-eval`` reads the dataset and the run's
``eval_scales``) and tool-local aliases (``hmsa-eval --scales`` sets ``eval_scales``).
Its flags live in a private ``absl.flags.FlagValues`` derived from the dataclasses
(:mod:`hmsa_keras.cli.schema`), so tools can share a process (tests) and ``--help`` lists
exactly the tool's flags.

:meth:`Tool.run`:

- ``--recipe=NAME`` means ``--flagfile=<packaged recipes>/NAME.cfg`` (``flags/`` in a checkout);
- flags coming from a flagfile that are recipe fields the tool does not read (e.g.
  ``--learning_rate`` for ``hmsa-eval``) are dropped, so one recipe serves every tool; flags
  on the command line itself must be the tool's own;
- ``--help``/``--helpfull`` print the tool's flags and exit 0; ``--helpshort`` its own
  options only; ``--helpxml`` absl's XML of them;
- a bad flag value stops with one line ``<tool>: error: --flag: ...`` and exit status 1;
- ``--verbosity=0`` (default) hides TensorFlow's and absl's INFO/WARNING lines; ``1`` shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Callable, Dict, Iterable, Optional, Sequence

from absl import app, flags

from hmsa_keras import config as C
from hmsa_keras.cli import schema

HELP_FLAGS = ("--help", "-h", "-?", "--helpfull", "--helpshort", "--helpxml")


def recipe_flag_names() -> set:
    """Every flag name of the run configuration (fields, aliases, shorthands)."""
    names = set()
    for cls in C.RUN_CONFIGS:
        names |= schema.flag_names(cls)
    return names


def _flag_name(arg: str) -> Optional[str]:
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name = arg.lstrip("-").split("=", 1)[0]
    return name


@dataclasses.dataclass
class Tool:
    """A command-line tool (see module docstring).

    Attributes:
      name: the console script, e.g. ``hmsa-eval``.
      doc: the usage text printed above the flags.
      options: the tool's own config dataclass (or None).
      recipe_fields: ``{run config class: field names or None (all)}`` the tool reads.
      aliases: tool-local ``{alias: flag}``.
      positional: names of allowed positional commands (``hmsa-data check|info``), or None.
      help_overrides: ``{flag: help}`` for recipe flags that mean something else to this
        tool (``--model_dir`` is the model to read, not where training writes); their
        recipe default is not shown, since the tool takes the value from the run instead.
    """

    name: str
    doc: str
    options: Optional[type] = None
    recipe_fields: Dict[type, Optional[Sequence[str]]] = dataclasses.field(default_factory=dict)
    aliases: Dict[str, str] = dataclasses.field(default_factory=dict)
    positional: Optional[Sequence[str]] = None
    help_overrides: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.flags = flags.FlagValues()
        self._own = []
        if self.options is not None:
            self._own = schema.define_flags(self.options, self.flags, module_name=self.name)
        self._read = set()
        for cls, fields in self.recipe_fields.items():
            group = f"recipe ({cls.__name__})"
            self._read |= set(schema.define_flags(cls, self.flags, fields, module_name=group))
        for name, text in self.help_overrides.items():
            self.flags[name].help = text
        for alias, target in self.aliases.items():
            flags.DEFINE_alias(alias, target, flag_values=self.flags, module_name=self.name)
            self._own.append(alias)
        flags.DEFINE_string(
            "recipe",
            None,
            "A recipe shipped with the package (flags/NAME.cfg); same as --flagfile=<its path>.",
            flag_values=self.flags,
            module_name=self.name,
        )
        flags.DEFINE_integer(
            "verbosity",
            0,
            "0: this tool's messages only; 1: also TensorFlow's and absl's INFO/WARNING log lines.",
            lower_bound=0,
            flag_values=self.flags,
            module_name=self.name,
        )

    # ------------------------------------------------------------------ parsing
    def expand(self, argv: Sequence[str]) -> list:
        """argv with recipes and flagfiles expanded and foreign recipe flags dropped."""
        from hmsa_keras.cli.recipes import recipe_path

        foreign = recipe_flag_names() - self._read  # recipe fields this tool does not read
        out = [argv[0]]
        args = list(argv[1:])
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                out += args[i:]
                break
            if arg.startswith("--recipe=") or arg == "--recipe":
                value = (
                    arg.split("=", 1)[1]
                    if "=" in arg
                    else (args[i + 1] if i + 1 < len(args) else "")
                )
                i += 1 if "=" in arg else 2
                arg = "--flagfile=" + recipe_path(value)
            elif arg == "--flagfile" and i + 1 < len(args):
                arg, i = "--flagfile=" + args[i + 1], i + 2
            else:
                i += 1
            if arg.startswith("--flagfile="):
                path = arg.split("=", 1)[1]
                if not os.path.isfile(path):
                    raise app.UsageError(f"--flagfile: {path!r} is not a file")
                expanded = self.flags.read_flags_from_files([arg], force_gnu=False)
                for item in expanded:
                    name = _flag_name(item)
                    base = (
                        name[2:] if name and name.startswith("no") and name[2:] in foreign else name
                    )
                    if base in foreign:
                        logging.getLogger("hmsa_keras").debug(
                            "%s: ignoring recipe flag %s", self.name, item
                        )
                        continue
                    out.append(item)
            else:
                out.append(arg)
        return out

    def parse(self, argv: Sequence[str]) -> list:
        """Parses ``argv`` into ``self.flags``; returns the positional arguments (after the
        program name). Raises app.UsageError for bad flags or arguments."""
        self.flags.unparse_flags()
        argv = self.expand(argv)
        try:
            rest = self.flags(argv)
        except flags.Error as exc:
            raise app.UsageError(str(exc)) from None
        positional = rest[1:]
        if self.positional is None and positional:
            raise app.UsageError(f"unexpected arguments: {' '.join(positional)}")
        if self.positional is not None and (
            len(positional) != 1 or positional[0] not in self.positional
        ):
            raise app.UsageError(
                f"expected one command of {'|'.join(self.positional)}, got "
                f"{' '.join(positional) or 'none'}"
            )
        return positional

    def config(self, cls, base=None, explicit_only=False):
        """The tool's own options or one run config, built from the parsed flags. A parse
        error names the flag as the user typed it (a tool alias such as ``--scales``)."""
        fields = None if cls is self.options else self.recipe_fields.get(cls)
        try:
            return schema.read_flags(
                cls, self.flags, base=base, fields=fields, explicit_only=explicit_only
            )
        except app.UsageError as exc:
            text = str(exc)
            for alias, target in self.aliases.items():
                if text.startswith(f"--{target}:") and self.flags[alias].present:
                    raise app.UsageError(f"--{alias}{text[len(target) + 2 :]}") from None
            raise

    def invoke(self, main: Callable[[list], int], args: Sequence[str]) -> int:
        """Parses ``args`` (without the program name) and returns ``main``'s status; for tests
        and scripts (no logging set-up, no exit). Raises app.UsageError for bad flags."""
        return main(self.parse([self.name, *args]))

    def given(self, name: str) -> bool:
        """True when ``--name`` was set on the command line or in a flagfile."""
        return name in self.flags and self.flags[name].present > 0

    # ------------------------------------------------------------------ help
    def help_text(self, short=False) -> str:
        lines = [self.doc.strip(), ""]
        # --helpshort: the tool's own options (for hmsa-train, whose options ARE the recipe, all)
        others = [m for m in self.flags.flags_by_module_dict() if m != self.name]
        modules = [self.name] + ([] if short and self.options is not None else others)
        for module in modules:
            flag_list = self.flags.flags_by_module_dict().get(module, [])
            if not flag_list:
                continue
            title = (
                "flags of " + module if module == self.name else module + ", e.g. from a flagfile"
            )
            lines.append(title + ":")
            for flag in sorted(flag_list, key=lambda f: f.name):
                default = flag.default_as_str if flag.default is not None else "unset"
                text = f"  --{flag.name}: {flag.help}"
                if flag.name in self.help_overrides:
                    pass  # the help says where the value comes from
                elif not flag.help.startswith("Alias for"):
                    text += f"\n    (default: {default})"
                lines.append(text)
            lines.append("")
        return "\n".join(lines)

    # ------------------------------------------------------------------ running
    def run(self, main: Callable[[list], int], argv: Optional[Sequence[str]] = None) -> None:
        """Parses the command line, sets up logging and exits with ``main``'s status."""
        argv = list(sys.argv if argv is None else argv)
        for arg in argv[1:]:
            if arg == "--":
                break
            if arg in HELP_FLAGS:
                if arg == "--helpxml":
                    self.flags.write_help_in_xml_format(sys.stdout)
                else:
                    print(self.help_text(short=arg == "--helpshort"))
                sys.exit(0)
        try:
            positional = self.parse(argv)
        except (app.UsageError, SystemExit) as exc:
            if isinstance(exc, SystemExit):
                raise
            print(f"{self.name}: error: {exc} (see --help)", file=sys.stderr)
            sys.exit(1)
        setup_logging(self.flags["verbosity"].value)
        flags.FLAGS.mark_as_parsed()  # libraries that read absl's global flags see them parsed
        try:
            status = main(positional)
        except app.UsageError as exc:
            print(f"{self.name}: error: {exc}", file=sys.stderr)
            status = 1
        sys.exit(status or 0)


# Lines TensorFlow's native libraries write straight to file descriptor 2 while `import
# tensorflow` loads them, before any log level applies (TF 2.21: "WARNING: All log messages
# before absl::InitializeLog() ...", the oneDNN notice of port.cc, twice).
_NATIVE_NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]|"
    rb"WARNING: All log messages before absl::InitializeLog\(\)|"
    rb"To enable the following instructions:)"
)
_QUIET_LIBRARIES = (
    r"(tensorflow|keras|tf_keras|absl|google\.protobuf|h5py|tensorflow_datasets)"
    r"(\.|$)"
)


@contextlib.contextmanager
def native_stderr_filtered(keep=lambda line: not _NATIVE_NOISE.match(line)):
    """Captures what is written to file descriptor 2 (C/C++ code included) inside the block
    and writes back only the lines ``keep`` accepts (default: all but TensorFlow's native
    INFO/WARNING lines). Used around ``import tensorflow`` at ``--verbosity=0``. (Should the
    process die inside the block, e.g. a native crash while TensorFlow loads, what it wrote is
    lost: rerun with ``--verbosity=1`` to see it.)"""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured by a test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture if keep(line))
            if kept:
                os.write(fd, kept)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Makes the first ``import tensorflow`` run inside :func:`native_stderr_filtered`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; the real finders do the work
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        real_exec = loader.exec_module

        def exec_module(module):
            with native_stderr_filtered():
                real_exec(module)

        loader.exec_module = exec_module
        return spec


def setup_logging(verbosity: int = 0) -> None:
    """Our messages at INFO on stderr (one line each). Below ``verbosity`` 1, TensorFlow's,
    Keras' and absl's output is cut to errors: their Python loggers at ERROR, the native
    log threshold ``TF_CPP_MIN_LOG_LEVEL=2`` (unless set), the INFO lines TensorFlow's
    libraries print while they load filtered out (:func:`native_stderr_filtered`), and
    their Python warnings (deprecations etc.) ignored. ``verbosity`` >= 1 shows everything."""
    if verbosity < 1:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path
        ):
            sys.meta_path.insert(0, _QuietTensorFlowImport())
        warnings.filterwarnings("ignore", module=_QUIET_LIBRARIES)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet = logging.ERROR if verbosity < 1 else logging.INFO
    for name in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "keras"):
        logging.getLogger(name).setLevel(quiet)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR if verbosity < 1 else absl_logging.INFO)
    except ImportError:  # pragma: no cover
        pass


def usage(flag: str, message: str) -> app.UsageError:
    """An error naming the flag: printed as ``<tool>: error: --flag: message``, status 1."""
    return app.UsageError(f"--{flag}: {message}")


def with_explicit(tool: Tool, base_configs: Iterable, classes: Iterable[type]) -> list:
    """Each run config of ``classes``: the ``base`` (e.g. from a run's config.json, or None for
    the defaults) with the flags given explicitly applied on top."""
    return [
        tool.config(cls, base=base, explicit_only=base is not None)
        if cls in tool.recipe_fields
        else base
        for base, cls in zip(base_configs, classes)
    ]
