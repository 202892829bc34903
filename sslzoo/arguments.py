"""The command line of every entry point: ``key=value`` arguments, typed, with one-line errors.

``train.py``, ``python -m sslzoo.eval``, ``python -m sslzoo.viz`` and ``benchmarks/compare.py``,
``ablations.py`` and ``throughput.py`` all read their arguments here, so that they share one set of
rules: a value is read as YAML (``0.1`` a float, ``[20]`` a list) except that ``on``/``off``/``yes``/
``no`` stay words; an option that takes a list also takes ``a,b,c``; ``-h``, ``--help`` or ``help``
first asks for the usage; a key given again replaces the earlier value. A malformed argument, an unknown
command or option (with the nearest one) and a value of the wrong type are each refused in one line.

An entry point declares a :class:`Parser`: its own typed :class:`Option` s, the key prefixes it hands
to another reader (``eval.`` keys to the evaluation protocol) and, if it has one, the reader of every
other key (a recipe's dotted keys, which the run config checks with its own nearest-key hints).
"""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import yaml

from sslzoo.config import coerce
from sslzoo.errors import UserError

HELP_WORDS = ("-h", "--help", "help")
YAML11_WORDS = {"on", "off", "yes", "no", "y", "n"}
REQUIRED = object()  # an Option's default when the option must be given


def asks_for_help(argv: list[str]) -> bool:
    return bool(argv) and argv[0] in HELP_WORDS


def value_of(text: str) -> Any:
    """One value as YAML reads it, but on/off/yes/no kept as words (``logger.wandb=off``)."""
    if not text or text.lower() in YAML11_WORDS:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with YAML-typed values; a key given again wins."""
    overrides: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise UserError(f"cannot read argument '{arg}': write overrides as key=value")
        overrides[key] = value_of(text)
    return overrides


def did_you_mean(word: str, choices: Collection[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{near[0]}'?" if near else ""


def command_of(argv: list[str], commands: Collection[str]) -> tuple[str, list[str]]:
    """The leading command word and the arguments after it; an unknown word is refused with the nearest."""
    name = argv[0]
    if name not in commands:
        raise UserError(f"unknown command '{name}'{did_you_mean(name, commands)} (commands: {', '.join(commands)})")
    return name, argv[1:]


@dataclass(frozen=True)
class Option:
    kind: Any  # a type annotation: str, int, float, bool, list[str], int | None, ...
    default: Any  # REQUIRED: the option must be given
    help: str = ""


def takes_list(kind: Any) -> bool:
    return list in (typing.get_origin(kind), *(typing.get_origin(arg) for arg in typing.get_args(kind)))


def typed(key: str, value: Any, kind: Any) -> Any:
    """``value`` as an option of type ``kind``; a list option also takes ``a,b,c`` and a single value."""
    if takes_list(kind) and value is not None and not isinstance(value, list):
        value = [value_of(item.strip()) for item in str(value).split(",") if item.strip()]
        if not value:
            raise UserError(f"{key}= is empty")
    return coerce(value, kind, key)


@dataclass
class Arguments:
    options: dict[str, Any]  # every option of the parser: given (typed) or its default
    passed: dict[str, dict[str, Any]]  # the other keys, by the reader they are passed to


@dataclass(frozen=True)
class Parser:
    """The arguments of one entry point (``name`` as its messages call it)."""

    name: str
    options: dict[str, Option]
    prefixes: dict[str, str] = field(default_factory=dict)  # key prefix -> reader: ``{"eval.": "eval"}``, dropped
    rest: str | None = None  # the reader of any other key; None: such a key is an unknown option
    rest_words: Collection[str] | None = None  # with ``rest``: the undotted keys it takes (None: any)

    def parse(self, argv: list[str]) -> Arguments:
        given = parse_overrides(argv)
        readers = [*self.prefixes.values(), *([self.rest] if self.rest else [])]
        passed: dict[str, dict[str, Any]] = {reader: {} for reader in readers}
        options = {}
        for key, value in given.items():
            if key in self.options:
                options[key] = typed(key, value, self.options[key].kind)
            elif prefix := next((p for p in self.prefixes if key.startswith(p)), None):
                passed[self.prefixes[prefix]][key.removeprefix(prefix)] = value
            elif self.rest and ("." in key or self.rest_words is None or key in self.rest_words):
                passed[self.rest][key] = value
            else:
                raise self.unknown(key)
        for key, option in self.options.items():
            if key in options:
                continue
            if option.default is REQUIRED:
                raise UserError(f"{self.name} needs {key}=: {option.help}")
            options[key] = copy.deepcopy(option.default)  # a list default stays the parser's own
        return Arguments(options, passed)

    def unknown(self, key: str) -> UserError:
        known = [*self.options, *(self.rest_words or ())]
        others = [f"{prefix}KEY" for prefix in self.prefixes] + ([f"dotted {self.rest} keys"] if self.rest else [])
        takes = ", ".join(known + others)
        return UserError(f"unknown option '{key}'{did_you_mean(key, known)} ({self.name} takes: {takes})")

    def usage(self) -> str:
        """One line per option: ``key=  help (default ...)``."""
        lines = []
        for key, option in self.options.items():
            default = "required" if option.default is REQUIRED else f"default {option.default}"
            lines.append(f"    {key}=  {option.help} ({default})")
        return "\n".join(lines)
