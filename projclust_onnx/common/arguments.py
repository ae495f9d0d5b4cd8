"""Checks of one argument each: its type and range, refused with a SettingError that names it.

Each returns the value as plain Python (numpy scalars become int or float), so that what a
config stores is what JSON writes.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from projclust_onnx.common.errors import SettingError, SettingTypeError, literal


def _real(value) -> bool:
    """A real number, numpy scalars included; never a bool (numpy's bool_ is not a Number)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def whole(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """An int (or numpy integer; not a bool, not 2.5) within bounds, as a Python int."""
    if not _real(value) or not isinstance(value, numbers.Integral):
        raise SettingTypeError(name, f"{{}}={literal(repr(value))} must be a whole number")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SettingError(name, f"{{}}={value} must be {bound}")
    return value


def number(name: str, value, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number (numpy floats included; not a bool) within bounds, as a Python float."""
    if not _real(value):
        raise SettingTypeError(name, f"{{}}={literal(repr(value))} must be a finite number")
    shown, value = literal(value), float(value)
    if not math.isfinite(value):
        raise SettingError(name, f"{{}}={shown} must be a finite number")
    if minimum is not None and value < minimum:
        raise SettingError(name, f"{{}}={shown} must be >= {minimum:g}")
    if maximum is not None and value > maximum:
        raise SettingError(name, f"{{}}={shown} must be <= {maximum:g}")
    return value


def choice(name: str, value, allowed: tuple) -> str:
    if not isinstance(value, str) or value not in allowed:
        error = SettingError if isinstance(value, str) else SettingTypeError
        raise error(name, f"{{}}={literal(repr(value))} must be one of {literal(allowed)}")
    return str(value)


def text(name: str, value, optional: bool = False) -> str | None:
    """A str (None too when optional)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SettingTypeError(name, f"{{}}={literal(repr(value))} must be a string")
    return str(value)


def path(name: str, value, optional: bool = False) -> str | None:
    """A str or os.PathLike path (None too when optional), as a str."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise SettingTypeError(name, f"{{}}={literal(repr(value))} must be a path (a non-empty str or "
                               "pathlib.Path)")
    return value


def paths(name: str, value) -> list[str]:
    """A list or tuple of paths (one path alone counts as a list of one; None as none), as strs."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [value]  # one file, not a list of its characters
    if not isinstance(value, (list, tuple)):
        raise SettingTypeError(name, f"{{}}={literal(repr(value))} must be a path or a list of paths")
    for item in value:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
            raise SettingTypeError(name, f"{{}} holds {literal(repr(item))}, which is not a path (a non-empty str "
                                   "or pathlib.Path)")
    return [str(Path(p)) if isinstance(p, os.PathLike) else p for p in value]


def flag(name: str, value, optional: bool = False) -> bool | None:
    """A real bool (numpy's bool_ too; None too when optional): overwrite="no" must not mean yes."""
    if value is None and optional:
        return None
    if type(value).__name__ == "bool_" or isinstance(value, bool):
        return bool(value)
    raise SettingTypeError(name, f"{name}={literal(repr(value))} must be True or False")
