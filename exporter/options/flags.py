"""Flags declared once: each option group lists its flags as data (Flag), and the CLI turns them into click options.

A flag's value lands under its API field (``ExportOptions.quantize`` for --int8 / --int4) and nowhere else: no
command lists it in its signature or passes it on by hand. Defaults live in the group's dataclass fields (which
read attn_export.defaults); a flag absent from the command line leaves its field at that default, and the help
states it. Import-light (click and the standard library only), so that flags are checked before torch loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from attn_export.errors import AttnExportError

META_KEY = "attn_export.flags"
COMMANDS = ("export", "check")  # where a flag exists unless it says otherwise (also engine, bench, ci-template)


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a group. ``value``: what a switch sets its field to (--int8 sets quantize="int8");
    ``show_default``: the help states the field's default; ``commands``: where the flag exists; ``help_for``: another
    help text on one command (--calib-data means other things to export and check)."""

    decls: tuple[str, ...]
    field: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    value: Any = None
    show_default: bool = False
    commands: tuple[str, ...] = COMMANDS
    help_for: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return next(d for d in self.decls[0].split("/") if d.startswith("--"))

    @property
    def is_pair(self) -> bool:  # --paro/--no-paro: None when absent, else the side given
        return "/" in self.decls[0]

    def given(self, raw) -> tuple[bool, Any]:
        """Whether the flag was on the command line, and the field value it gives."""
        if self.is_pair:
            return raw is not None, raw
        if self.attrs.get("is_flag"):
            return bool(raw), True if self.value is None else self.value
        return raw not in (None, ()), raw


def flag(*decls: str, field: str, value=None, show_default: bool = False, commands: Sequence[str] = COMMANDS,
         help_for: Mapping[str, str] | None = None, **attrs) -> Flag:
    return Flag(tuple(decls), field, attrs, value, show_default, tuple(commands), dict(help_for or {}))


def _default_text(group: type, name: str) -> str | None:
    for f in dataclasses.fields(group):
        if f.name == name and f.default is not dataclasses.MISSING and f.default not in (None, ()):
            return str(f.default)
    return None


def _store(flag_: Flag) -> Callable:
    def keep(ctx, _param, raw):
        given, value = flag_.given(raw)
        if given:
            ctx.meta.setdefault(META_KEY, []).append((flag_.name, flag_.field, value))
        return raw

    return keep


def click_options(command: str, groups: Sequence[type]) -> Callable:
    """A decorator adding every flag of ``groups`` that exists on ``command``, in the groups' order."""
    decorators = []
    for group in groups:
        for flag_ in group.FLAGS:
            if command not in flag_.commands:
                continue
            text = flag_.help_for.get(command, flag_.attrs.get("help", ""))
            default = _default_text(group, flag_.field) if flag_.show_default else None
            attrs = {**flag_.attrs, "help": f"{text} [default: {default}]" if default else text}
            attrs.setdefault("default", None)
            decorators.append(click.option(*flag_.decls, expose_value=False, callback=_store(flag_), **attrs))

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def given_values(ctx: click.Context | None = None) -> dict[str, Any]:
    """The fields the command line set, by name; two flags setting one field to different values are exclusive."""
    ctx = ctx or click.get_current_context()
    values: dict[str, Any] = {}
    by: dict[str, str] = {}
    for name, field_name, value in ctx.meta.get(META_KEY, []):
        if field_name in values and values[field_name] != value:
            raise AttnExportError(f"{by[field_name]} and {name} are exclusive: choose one")
        values[field_name], by[field_name] = value, name
    return values


def fields_of(group: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``group`` (a dataclass)."""
    names = {f.name for f in dataclasses.fields(group)}
    return {k: v for k, v in values.items() if k in names}
