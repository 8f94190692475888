"""User errors: mistakes the user can fix, which the CLI prints as one line (exit code 2).

`whisper_sv.cli` treats as a user error: a `UserError` from anywhere; a ``ValueError`` that this
package raised itself (a config check, an audio reason, a spec it cannot read); and a missing,
existing or forbidden path (``FileNotFoundError``, ``FileExistsError``, ``IsADirectoryError``,
``NotADirectoryError``, ``PermissionError``). Anything else is a bug and keeps its traceback.
`UserError` is for wrapping what a library raised about the user's input (a model folder that
``from_pretrained`` cannot read), so it reaches the user as a user error and not as a crash.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """A mistake the user can fix; the message says what to change."""


def with_closest(key: str, known: typing.Iterable[str]) -> str:
    """``'lerning_rate' (did you mean 'learning_rate'?)``: an unknown key as every "unknown key" message names it."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def check_field_types(obj: Any, names: typing.Iterable[str] | None = None) -> None:
    """Raise `UserError` when a field of the dataclass instance `obj` holds a value of the wrong type.

    Values come from JSON presets and ``--key value`` overrides (``--learning_rate abc`` arrives as
    the string "abc"), so they are checked against the annotations before anything compares or
    loads them. Annotations this does not understand are left to the code that uses the value.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if names is not None and f.name not in names:
            continue
        value = getattr(obj, f.name)
        if f.name in hints and not type_matches(value, hints[f.name]):
            raise UserError(f"{f.name}={value!r}: expected {describe_type(hints[f.name])}")


def check_value_types(values: dict[str, Any], hints: dict[str, Any]) -> None:
    """`check_field_types` for a plain dict of values against a dict of annotations."""
    for name, value in values.items():
        if name in hints and not type_matches(value, hints[name]):
            raise UserError(f"{name}={value!r}: expected {describe_type(hints[name])}")


def type_matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits `hint` (int, float, bool, str, Optional/union, list, dict, Enum, Path)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, Path))
    if hint in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    return True  # a class or construct not checked here: the code that uses it decides


def describe_type(hint: Any) -> str:
    """``int | None`` -> "an integer or null", in the words of a JSON preset."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe_type(arg) for arg in typing.get_args(hint)))
    words = {
        bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
        type(None): "null", list: "a list", tuple: "a list", dict: "an object",
    }
    if hint in words:
        return words[hint]
    if origin in words:
        return words[origin]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))


# Path errors are the user's wherever they are raised (a preset, a folder, a clip that is not there).
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(err: BaseException) -> bool:
    """A `UserError`, a path error, or a ValueError raised by this package's own code (not a library's)."""
    if isinstance(err, (UserError,) + PATH_ERRORS):
        return True
    if not isinstance(err, ValueError):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module == "whisper_sv" or module.startswith("whisper_sv.")


def one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
