"""absl flags derived from the config dataclasses (:mod:`hmsa_keras.config`), and back.

:func:`define_flags` defines one flag per dataclass field (its help, default, bounds and
choices come from the field, so nothing is written twice); :func:`read_flags` builds the
dataclass from the parsed flags, parsing scale chains and ``HxW`` sizes with the shared
rules of :mod:`hmsa_keras.conventions`. Field types map to flags as follows:

=====================================  ===================================================
field                                  flag
=====================================  ===================================================
``bool`` / ``Optional[bool]``          boolean (``--x`` / ``--nox``)
``int`` / ``float`` (+ bounds)         integer / float; with choices: an enum of their text
``str`` (+ choices)                    string / enum
``Tuple[float, ...]`` kind ``scales``  text, a scale chain ``0.5,1.0,2.0``
``Tuple[float, ...]`` kind ``floats``  text, comma-separated numbers
``Tuple[int, int]`` kind ``hw``        text, ``HxW`` / ``H,W`` / one number
``Tuple[str, ...]`` kind ``multi``     repeatable enum (``--freeze=trunk --freeze=attention``)
``Tuple[str, ...]`` (+ choices)        comma-separated list of choices
=====================================  ===================================================

``Optional[...]`` fields default to ``None``; with ``zero_is_none`` a ``0`` means ``None``.
Errors raised by :func:`read_flags` are ``absl.app.UsageError`` whose message starts with
the flag (``--crop_size: expected HxW such as 512x1024, ...``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Iterable, Optional

from absl import app, flags

from hmsa_keras import conventions
from hmsa_keras.config import SHORTHANDS


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """How one dataclass field is a flag."""

    name: str
    base: type  # bool, int, float, str or tuple
    optional: bool
    kind: Optional[str]  # scales | floats | hw | multi | list | None
    default: object
    help: str
    choices: Optional[tuple]
    lower: Optional[float]
    upper: Optional[float]
    aliases: tuple
    zero_is_none: bool


def field_specs(cls) -> list:
    """The :class:`FieldSpec` of every field of the dataclass ``cls``, in order."""
    hints = typing.get_type_hints(cls)
    specs = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(
                f"{cls.__name__}.{field.name} has no help text: declare it with config.option()"
            )
        hint, optional = hints[field.name], False
        if typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint, optional = args[0], True
        base = typing.get_origin(hint) or hint
        kind = meta.get("kind")
        if base is tuple and kind is None:
            kind = "list"
        specs.append(
            FieldSpec(
                field.name,
                base,
                optional,
                kind,
                field.default,
                meta["help"],
                meta.get("choices"),
                meta.get("lower"),
                meta.get("upper"),
                meta.get("aliases", ()),
                meta.get("zero_is_none", False),
            )
        )
    return specs


def _text(spec, value):
    """A default value as the flag's text."""
    if value is None:
        return None
    if spec.kind == "hw":
        return f"{value[0]}x{value[1]}"
    if spec.kind in ("scales", "floats"):
        return ",".join(f"{float(v):g}" for v in value)
    return value


def define_flags(
    cls,
    flag_values: flags.FlagValues,
    fields: Optional[Iterable[str]] = None,
    module_name: Optional[str] = None,
) -> list:
    """Defines a flag for each field of ``cls`` (or only those named in ``fields``) in
    ``flag_values``, plus each field's aliases and the shorthands of ``cls``
    (:data:`hmsa_keras.config.SHORTHANDS`). Returns the names of the flags defined."""
    wanted = None if fields is None else set(fields)
    defined = []
    kw = dict(flag_values=flag_values, module_name=module_name)
    for spec in field_specs(cls):
        if wanted is not None and spec.name not in wanted:
            continue
        name, default, help_text = spec.name, spec.default, spec.help
        bounds = dict(lower_bound=spec.lower, upper_bound=spec.upper)
        if spec.base is bool:
            flags.DEFINE_boolean(name, default, help_text, **kw)
        elif spec.kind == "multi":
            flags.DEFINE_multi_enum(name, list(default or []), list(spec.choices), help_text, **kw)
        elif spec.kind == "list":
            flags.DEFINE_list(name, list(default) if default is not None else None, help_text, **kw)
        elif spec.base is tuple:
            flags.DEFINE_string(name, _text(spec, default), help_text, **kw)
        elif spec.choices:
            flags.DEFINE_enum(
                name,
                None if default is None else str(default),
                [str(c) for c in spec.choices],
                help_text,
                **kw,
            )
        elif spec.base is int:
            flags.DEFINE_integer(name, default, help_text, **bounds, **kw)
        elif spec.base is float:
            flags.DEFINE_float(name, default, help_text, **bounds, **kw)
        else:
            flags.DEFINE_string(name, default, help_text, **kw)
        defined.append(name)
        for alias in spec.aliases:
            flags.DEFINE_alias(alias, name, **kw)
            defined.append(alias)
    for short, (owner, targets, help_text) in SHORTHANDS.items():
        if owner is cls and (wanted is None or wanted & set(targets)):
            flags.DEFINE_integer(short, None, help_text, lower_bound=1, **kw)
            defined.append(short)
    return defined


def _usage(name, message):
    return app.UsageError(f"--{name}: {message}")


def _parse(spec, value):
    """The flag's parsed value as the field's type; raises UsageError naming the flag."""
    name = spec.name
    if value is None:
        if not spec.optional and spec.default is not None:
            raise _usage(name, "a value is required")
        return None
    try:
        if spec.kind == "scales":
            return conventions.parse_scales(value, f"--{name}")
        if spec.kind == "hw":
            return conventions.parse_hw(value, f"--{name}")
        if spec.kind == "floats":
            parts = [p.strip() for p in str(value).split(",") if p.strip()]
            numbers = tuple(float(p) for p in parts)
            if spec.lower is not None and any(v < spec.lower for v in numbers):
                raise ValueError(f"every value must be >= {spec.lower:g}, got {value!r}")
            return numbers
    except ValueError as exc:
        text = str(exc)
        raise _usage(
            name, text.split(": ", 1)[1] if text.startswith(f"--{name}: ") else text
        ) from None
    if spec.kind in ("list", "multi"):
        values = tuple(str(v).strip() for v in value if str(v).strip())
        if spec.choices:
            bad = [v for v in values if v not in spec.choices]
            if bad:
                raise _usage(name, f"unknown value(s) {bad}; choose from {','.join(spec.choices)}")
        return values
    if spec.base is int:
        value = int(value)
        if spec.zero_is_none and value == 0:
            return None
    return value


def read_flags(
    cls,
    flag_values: flags.FlagValues,
    base=None,
    fields: Optional[Iterable[str]] = None,
    explicit_only: bool = False,
):
    """Builds ``cls`` from parsed flags.

    Args:
      cls: a config dataclass.
      flag_values: parsed flags (defined by :func:`define_flags`).
      base: an instance whose values are kept for fields not taken from the flags
        (default: the dataclass defaults).
      fields: take only these fields from the flags.
      explicit_only: take only flags given on the command line or in a flagfile (not the
        flags' defaults), e.g. to override the values of a run's ``config.json``.
    Raises:
      absl.app.UsageError: a value that cannot be parsed, naming the flag.
    """
    wanted = None if fields is None else set(fields)
    changes = {}
    for spec in field_specs(cls):
        if spec.name not in flag_values or (wanted is not None and spec.name not in wanted):
            continue
        flag = flag_values[spec.name]
        if explicit_only and not flag.present:
            continue
        changes[spec.name] = _parse(spec, flag.value)
    for short, (owner, targets, _) in SHORTHANDS.items():
        if owner is cls and short in flag_values and flag_values[short].value is not None:
            for target in targets:
                if target in flag_values and not flag_values[target].present:
                    changes[target] = flag_values[short].value
    base = base if base is not None else cls()
    return dataclasses.replace(base, **changes)


def flag_names(cls, fields: Optional[Iterable[str]] = None) -> set:
    """Every flag name (fields, aliases and shorthands) that :func:`define_flags` defines."""
    wanted = None if fields is None else set(fields)
    names = set()
    for spec in field_specs(cls):
        if wanted is None or spec.name in wanted:
            names.add(spec.name)
            names.update(spec.aliases)
    names.update(
        s
        for s, (owner, targets, _) in SHORTHANDS.items()
        if owner is cls and (wanted is None or wanted & set(targets))
    )
    return names
