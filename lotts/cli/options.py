"""Command-line options shared by the subcommands, LoTTSConfig's generated from its fields."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from collections.abc import Sequence
from typing import Any, Union

from lotts.config import LoTTSConfig
from lotts.errors import UsageError


def _parse_scalar(text: str, kinds: Sequence[type], optional: bool) -> Any:
    """argparse type for int/float/str fields and unions of them; 'none' gives None."""
    if optional and text.lower() == "none":
        return None
    for kind in kinds:
        if kind is int and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if kind is float:
            try:
                return float(text)
            except ValueError:
                continue
        if kind is str:
            return text
    raise argparse.ArgumentTypeError(f"expected {' or '.join(k.__name__ for k in kinds)}, got {text!r}")


def _argument_for(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments (type, nargs, metavar) for one dataclass field type."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union and type(None) in members and len(members) == 2:  # Optional[tuple[...]]
        inner = next(m for m in members if m is not type(None))
        if typing.get_origin(inner) is tuple:
            return _argument_for(inner)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"nargs": len(members), "type": members[0] if members else str}
    optional = origin is Union and type(None) in members
    kinds: list[type] = []
    for member in members if origin is Union else (annotation,):
        kinds += [m for m in typing.get_args(member) or (member,) if m in (int, float, str)]
    kinds.sort(key=(int, float, str).index)
    metavar = "|".join(k.__name__.upper() for k in kinds) + ("|none" if optional else "")
    return {"type": lambda text: _parse_scalar(text, kinds, optional), "metavar": metavar}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per LoTTSConfig field (``num_seeds`` -> ``--num-seeds``), its help from the
    field's metadata and its default from the dataclass, so there is one source of both."""
    group = parser.add_argument_group("LoTTS options (LoTTSConfig fields)")
    hints = typing.get_type_hints(LoTTSConfig)
    for item in dataclasses.fields(LoTTSConfig):
        text = item.metadata.get("help", "")
        choices = item.metadata.get("choices")
        kind = {"choices": choices} if choices else _argument_for(hints[item.name])
        group.add_argument(f"--{item.name.replace('_', '-')}", dest=f"config_{item.name}",
                           default=None,
                           help=f"{text} (default: {item.default!r})".strip().replace("%", "%%"),
                           **kind)


def config_from_args(args: argparse.Namespace) -> LoTTSConfig:
    """A validated LoTTSConfig from the options given; an invalid value is a UsageError."""
    given = {f.name: getattr(args, f"config_{f.name}") for f in dataclasses.fields(LoTTSConfig)
             if getattr(args, f"config_{f.name}", None) is not None}
    try:
        return LoTTSConfig(**given)
    except (TypeError, ValueError) as error:
        raise UsageError(f"invalid LoTTS option: {error}") from None


def pipe_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def best_of_n_arg(text: str) -> Union[int, str]:
    return "matched" if text == "matched" else positive_int(text)


