"""Command-line options derived from the pydantic configuration models, never re-typed.

Every leaf field of a config model becomes one ``--option`` whose default is *None* (= not given),
whose help is the field's description and whose choices come from the field's Literal/Enum type.
Only the options a person actually gives are written over the configuration (the ``--config`` file
or the model's own defaults), so the defaults live in exactly one place: the model.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import click
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class ConfigOption:
    path: tuple[str, ...]  # where the value goes in the config, e.g. ("split", "test_days")
    flag: str  # the option without dashes, e.g. "days"
    kind: str  # "scalar", "bool" or "list"
    python_type: Any
    choices: tuple[str, ...] | None
    help: str

    @property
    def panel(self) -> str:
        return self.path[0] if len(self.path) > 1 else "general"

    @property
    def param(self) -> str:
        return "opt_" + self.flag.replace("-", "_")


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _choices(annotation: Any) -> tuple[str, ...] | None:
    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return tuple(str(m.value) for m in annotation)
    return None


def _describe(annotation: Any) -> tuple[str, type, tuple[str, ...] | None] | None:
    """(kind, python type, choices) of a leaf field, or None for fields the CLI leaves to --set/--config."""
    annotation = _unwrap_optional(annotation)
    if get_origin(annotation) is list:
        (inner,) = get_args(annotation)
        return "list", str, _choices(inner)
    if get_origin(annotation) in (dict, Union, types.UnionType):
        return None
    choices = _choices(annotation)
    if choices is not None:
        return "scalar", str, choices
    if annotation is bool:
        return "bool", bool, None
    if annotation in (int, float, str):
        return "scalar", annotation, None
    return None


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap_optional(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _help(field: FieldInfo, kind: str, choices: tuple[str, ...] | None, default_note: str | None) -> str:
    text = (field.description or "").rstrip(".")
    if choices and kind == "list":
        text += f" ({', '.join(choices)}; comma-separated)"
    elif kind == "list":
        text += " (comma-separated)"
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if default_note:
        text += f"; default {default_note}"
    elif default is not None and not isinstance(default, BaseModel):
        shown = ",".join(map(str, default)) if isinstance(default, list) else getattr(default, "value", default)
        text += f"; default {shown}"  # not "[default: …]": rich would read that as markup
    return text.strip()


def _leaves(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield from _leaves(nested, prefix + (name,))
        else:
            yield prefix + (name,), field


def options_for(
    model: type[BaseModel],
    *,
    rename: dict[str, str] | None = None,
    skip: set[str] | None = None,
    default_note: str | None = None,
) -> list[ConfigOption]:
    """One option per leaf field of ``model``; ``rename`` maps a dotted path to its flag.

    ``default_note`` replaces the field's own default in the help (e.g. "the preset's value").
    """
    rename, skip = rename or {}, skip or set()
    options: list[ConfigOption] = []
    for path, field in _leaves(model, ()):
        dotted = ".".join(path)
        described = _describe(field.annotation)
        if dotted in skip or described is None:
            continue
        kind, python_type, choices = described
        flag = rename.get(dotted, path[-1].replace("_", "-"))
        options.append(ConfigOption(path, flag, kind, python_type, choices, _help(field, kind, choices, default_note)))
    flags = [o.flag for o in options]
    clashes = sorted({f for f in flags if flags.count(f) > 1})
    if clashes:
        raise RuntimeError(f"options {clashes} are derived from two settings of {model.__name__}: add a rename")
    return options


def _typer_parameter(option: ConfigOption) -> inspect.Parameter:
    kwargs: dict[str, Any] = {"help": f"[{option.panel}] {option.help}"}
    if option.kind == "bool":
        decl = [f"--{option.flag}/--no-{option.flag}"]
    else:
        decl = [f"--{option.flag}"]
    python_type = Literal[option.choices] if option.choices and option.kind == "scalar" else option.python_type
    annotation = Annotated[Optional[python_type], typer.Option(*decl, **kwargs)]  # noqa: UP045
    return inspect.Parameter(option.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _split_list(option: ConfigOption, text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if option.choices and v not in option.choices]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(option.choices)}", param_hint=f"--{option.flag}")
    return values


def given_values(options: list[ConfigOption], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options that were given, as a nested dict to lay over the configuration."""
    nested: dict[str, Any] = {}
    for option in options:
        value = kwargs.pop(option.param, None)
        if value is None:
            continue
        if option.kind == "list":
            value = _split_list(option, value)
        node = nested
        for key in option.path[:-1]:
            node = node.setdefault(key, {})
        node[option.path[-1]] = value
    return nested


def deep_update(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``given`` laid over it, section by section (neither is modified)."""
    out = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def with_options(options: list[ConfigOption]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``options`` to a Typer command; the command receives them as ``given`` (a nested dict)."""

    flags = [o.flag for o in options]
    clashes = sorted({f for f in flags if flags.count(f) > 1})
    if clashes:
        raise RuntimeError(f"options {clashes} are derived from two settings: add a rename")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "given"]
        params = own + [_typer_parameter(o) for o in options]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = given_values(options, kwargs)
            return command(**kwargs, given=given)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        hints = typing.get_type_hints(command, include_extras=True)
        wrapper.__annotations__ = {p.name: hints.get(p.name, p.annotation) for p in own} | {
            p.name: p.annotation for p in params[len(own) :]
        }
        wrapper.__wrapped__ = None  # typer must read the new signature, not the wrapped one
        del wrapper.__wrapped__
        return wrapper

    return decorate
