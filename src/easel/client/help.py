"""The ``easel`` command's Typer apps, whose help pages show no value type beside a flag.

Typer's rich help (0.29) prints a type beside every option: ``<str>`` beside ``--model``, but
``<bool>`` beside ``--t-pose`` and even ``--help`` too, though a flag takes no value. Every
app of the command is an :class:`App`; its commands and groups leave that column empty for
flags (the help shows an option's metavar, when it has one, in place of its type).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType


def _flags_without_type(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class FlagCommand(TyperCommand):
    """A command whose help shows its flags (``--help`` included) without ``<bool>``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_type(super().get_params(ctx))


class FlagGroup(TyperGroup):
    """A group whose help shows its flags (``--help`` included) without ``<bool>``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_type(super().get_params(ctx))


class App(typer.Typer):
    """A ``typer.Typer`` whose commands and groups are :class:`FlagCommand`/:class:`FlagGroup`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**{"cls": FlagGroup, **options})

    def command(
        self, name: str | None = None, **options: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, **{"cls": FlagCommand, **options})
