"""Options shared by the ``dprune`` commands, and the selection options generated from
:class:`~dprune.select.PruneSpec` (the one place they are declared)."""
from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

import click

from .select import PruneSpec


def check_new_output(path: Path, what: str, *, not_same_as=()) -> Path:
    from .rundir import check_output_path

    return check_output_path(path, what, not_same_as=not_same_as)


class Size(click.ParamType):
    """A size in bytes: ``1000000``, ``500M``, ``1.5G``, ``2T`` (powers of 1024)."""

    name = "size"
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self._UNITS else ""
        try:
            number = float(text[: len(text) - len(unit)])
        except ValueError:
            number = -1.0
        if not 0 <= number < float(1 << 60):
            self.fail(f"{value!r} is not a size such as 500M, 20G or 1000000", param, ctx)
        return int(number * self._UNITS[unit])


SIZE = Size()


FIRST_EPOCHS_HELP = ("Use only the first K completed epochs, as if the run had stopped there (the paper scores "
                     "the first 12 epochs of a 120-epoch schedule). Default: every completed epoch.")


def param_option(func):
    from .scoring.params import param_help

    return click.option("--param", "params", multiple=True, metavar="NAME.OPTION=VALUE",
                        help="Scorer/flag parameter, repeatable (type and range checked): " + param_help())(func)


def spec_options(defaults: PruneSpec, *, required=(), skip=()):
    """One option per field of ``defaults``'s class (:class:`~dprune.select.PruneSpec`): its flag,
    help and choices from the field's metadata, its default from ``defaults``.  The command gets
    them as one validated ``spec`` argument.  ``required``: fields the user must give; ``skip``:
    fields the command sets itself (they keep ``defaults``'s value)."""
    from .options import parse_value

    cls = type(defaults)
    hints = typing.get_type_hints(cls)
    given = [f for f in dataclasses.fields(cls) if f.name not in skip]
    plain = (bool, int, float, str)

    def decorate(func):
        @functools.wraps(func)
        def command(**kwargs):
            values = {f.name: kwargs.pop(f.name) for f in given}
            values = {k: v if hints[k] in plain or v is None else parse_value(v) for k, v in values.items()}
            return func(spec=dataclasses.replace(defaults, **values), **kwargs)

        for f in reversed(given):
            meta, typ, name = f.metadata, hints[f.name], f.name.replace("_", "-")
            flag = meta.get("flag") or f"--{name}"
            decls = [meta["short"]] if meta.get("short") else []
            kw = dict(help=meta["help"], default=getattr(defaults, f.name), show_default=True)
            if f.name in required:
                kw.update(required=True, default=None, show_default=False)
            if typ is bool:
                decls.append(f"{flag}/--no-{flag[2:]}")
            else:
                decls.append(flag)
                kw["type"] = click.Choice(meta["choices"]) if typ is str and meta.get("choices") else \
                    typ if typ in plain else str
                kw["metavar"] = meta.get("metavar")
            command = click.option(*decls, f.name, cls=SpecOption, **kw)(command)
        return command

    return decorate


class SpecOption(click.Option):
    """An option generated from a :class:`~dprune.select.PruneSpec` field (by :func:`spec_options`)."""
