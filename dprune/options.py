"""``NAME=VALUE`` options: the one parser for ``--param``, ``--set`` and JSON config values.

Values are read as JSON when they parse as JSON (``5``, ``0.3``, ``true``, ``null``,
``"x"``), else taken as plain strings, then checked against the declared type: an ``int``
field refuses ``2.5`` and ``true``, a ``float`` field refuses ``inf``, ``nan`` and
``1e400``.  Errors are ``ValueError`` naming the option and the value.
"""
from __future__ import annotations

import json
import math
import typing
from typing import Any


def split_assignment(item: str, what: str) -> tuple[str, str]:
    """``"a.b=3"`` -> ``("a.b", "3")``; ``what`` names the option in the error (``--param``)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{what}: expected NAME=VALUE, got {item!r}")
    return key.strip(), value


def parse_value(text: str) -> Any:
    """JSON if it parses (``1e400`` parses to inf and is caught by :func:`coerce`), else the string
    (also for JSON nested too deep or with an integer of too many digits, which no option takes)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def coerce(value: Any, typ, name: str) -> Any:
    """Check ``value`` against ``typ`` (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``).

    Returns the value converted where the conversion is exact (an int for a float field).
    """
    args = typing.get_args(typ)
    if typing.get_origin(typ) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], name)
        for t in inner:
            try:
                return coerce(value, t, name)
            except ValueError:
                pass
        raise ValueError(f"{name}: {value!r} is none of {', '.join(t.__name__ for t in inner)}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)
        raise ValueError(f"{name} must be a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    raise TypeError(f"unsupported option type {typ!r} for {name}")
