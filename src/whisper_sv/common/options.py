"""One way to wire options: command-line flags and environment variables made from config dataclasses.

A config dataclass is the single place a setting is declared: its name, type, default and what it
does, the last in the field's metadata (``name: int = option(3, "what it does")``, `option`).
`add_options` turns the fields into ``--flag`` arguments whose ``--help`` shows that text and the default;
`options_from` collects the flags a user gave; `env_options` reads the same fields from environment
variables (a Hugging Face Space is configured that way). Values are read as the field's type says:
``true/false`` (or 1/0) for a bool, ``null`` for an optional value, JSON for numbers, lists and dicts, the
text itself for a string. The dataclass's own ``__post_init__`` then checks them, so a flag, a
preset key and an environment variable are refused with the same message.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from typing import Any, Mapping

from .errors import UserError, check_value_types, with_closest

# As JSON spells them (a preset says true/false), and the 1/0 an environment variable often holds.
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose ``--help`` text is `help` (kept in the field's metadata, which
    `add_options` reads): ``clips: int = option(3000, "corpus size")``; `factory` for a mutable default."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


def value_from_text(text: str, hint: Any) -> Any:
    """A command-line or environment string as the field type `hint` reads it (unchecked: the dataclass checks)."""
    optional = _accepts_none(hint)
    if optional and text.strip().lower() in ("null", "none"):
        return None
    base = _without_none(hint)
    if base is bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        return text  # refused by the dataclass's type check, with the field's name
    if base is str:
        if text.startswith('"'):  # a JSON string, as a preset spells it ('"cross_kv"'): its text
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return text
            return value if isinstance(value, str) else text
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                aliases: Mapping[str, str] | None = None, title: str | None = None) -> None:
    """One ``--field-name`` flag per field of dataclass `cls`, help from its metadata (`option`).

    ``--field_name`` (the preset's spelling) works too, unlisted, and so does an older spelling
    given in `aliases` (field -> flag). Flags default to "not given" (`argparse.SUPPRESS`) so a
    preset's value stands unless a flag overrides it; the help shows the dataclass default.
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        hidden = [f"--{f.name}"] if "_" in f.name else []  # the preset's spelling works too, unlisted
        if aliases and f.name in aliases:
            hidden.append(aliases[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} ({'required' if required else f'default: {_show(default)}'})".strip()
        hint = hints.get(f.name, str)
        kwargs: dict[str, Any] = {}
        if _without_none(hint) is bool:
            kwargs.update(nargs="?", const="true", metavar="true|false")  # `--flag` alone means true
        else:
            kwargs["metavar"] = _metavar(hint)
        convert = functools.partial(value_from_text, hint=hint)
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, type=convert,
                           help=help_text.replace("%", "%%"), **kwargs)
        for flag in hidden:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, type=convert, help=argparse.SUPPRESS, **kwargs)


def options_from(args: argparse.Namespace, cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `cls` (but `skip`, as given to `add_options`) that were given on the command line, by name."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given and f.name not in skip}


def env_options(cls: type, prefix: str, environ: Mapping[str, str], *,
                aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Fields of `cls` set in `environ` as ``PREFIX + FIELD`` (upper case), or an alias name; empty means unset."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        for name in (f"{prefix}{f.name.upper()}", (aliases or {}).get(f.name)):
            if name and environ.get(name, "").strip():
                out[f.name] = value_from_text(environ[name], hints.get(f.name, str))
                break
    return out


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls(**values)``, with unknown keys refused in one line naming the closest field."""
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UserError(f"unknown {cls.__name__} key(s): {', '.join(with_closest(k, known) for k in unknown)}")
    check_value_types(dict(values), typing.get_type_hints(cls))  # before __post_init__ compares them
    return cls(**values)


def _accepts_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _metavar(hint: Any) -> str:
    base = _without_none(hint)
    name = {int: "INT", float: "FLOAT", str: "TEXT"}.get(base)
    if name is None:
        name = "JSON"
    return name + ("|null" if _accepts_none(hint) else "")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)
