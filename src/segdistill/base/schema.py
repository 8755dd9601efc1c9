"""Dataclasses as config schemas: building a section from YAML values, type checks, value checks.

A schema is a dataclass; a field may declare what values it allows with :func:`setting`
(``flip_p: float = setting(0.5, Probability())``). :func:`build_section` refuses unknown keys (with
the closest valid key), wrong types and values outside what a field allows, each with one
:class:`~segdistill.errors.UserError` line naming the key, the value and what is allowed. Light: no
torch, so the command line can use it while it builds its parser.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


def closest(name: str, options: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The ``n`` names of ``options`` closest to ``name`` (difflib ratio >= ``cutoff``), best first."""
    return difflib.get_close_matches(name, list(options), n=n, cutoff=cutoff)


def fields_of(source: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: source.<name>}`` for each of ``names``: a config section's values as keyword arguments."""
    return {name: getattr(source, name) for name in names}


def did_you_mean(name: str, options: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ``''``."""
    match = closest(name, options, cutoff=cutoff)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ----------------------------------------------------------------------------------------------------
# value checks


class Check(abc.ABC):
    """What a field allows. ``problem(value)`` is ``None`` for an allowed value; ``allowed`` says what
    is allowed; ``bad_examples`` are values the check refuses (the schema test feeds them back)."""

    allowed: str = ""

    @abc.abstractmethod
    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` is allowed, else what is wrong with it."""

    @abc.abstractmethod
    def bad_examples(self) -> list[Any]:
        """Values this check refuses."""


@dataclass(frozen=True)
class AtLeast(Check):
    """A number ``>= low`` (``> low`` when ``strict``)."""

    low: float
    strict: bool = False

    @property
    def allowed(self) -> str:  # type: ignore[override]
        if self.strict and self.low == 0:
            return "a positive number"
        return f"a number {'>' if self.strict else '>='} {_number(self.low)}"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, (int, float)) and not math.isnan(value):
            ok = value > self.low if self.strict else value >= self.low
            if ok and not math.isinf(value):
                return None
        return "out of range"

    def bad_examples(self) -> list[Any]:
        low = int(self.low) if float(self.low).is_integer() else self.low
        return [low if self.strict else low - 1, low - 5]


def Positive() -> AtLeast:  # noqa: N802 (reads as a type of value)
    """A number > 0 (counts, sizes, rates, scales)."""
    return AtLeast(0, strict=True)


def NonNegative() -> AtLeast:  # noqa: N802
    """A number >= 0 (weights, intervals where 0 means off)."""
    return AtLeast(0)


@dataclass(frozen=True)
class Between(Check):
    """A number in ``[low, high]`` (``high`` excluded when ``open_high``)."""

    low: float
    high: float
    open_high: bool = False

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"a number in [{_number(self.low)}, {_number(self.high)}{')' if self.open_high else ']'}"

    def problem(self, value: Any) -> str | None:
        if (
            isinstance(value, (int, float))
            and self.low <= value
            and (value < self.high or (not self.open_high and value == self.high))
        ):
            return None
        return "out of range"

    def bad_examples(self) -> list[Any]:
        return [self.low - 0.5, self.high + 0.5] + ([self.high] if self.open_high else [])


def Probability() -> Between:  # noqa: N802
    return Between(0.0, 1.0)


@dataclass(frozen=True)
class OneOf(Check):
    """One of a fixed set of values (strings, or numbers such as output strides)."""

    choices: tuple[Any, ...]

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(str(c) for c in self.choices)

    def problem(self, value: Any) -> str | None:
        if value in self.choices:
            return None
        if isinstance(value, str):
            return "not a valid choice" + did_you_mean(value, [str(c) for c in self.choices], cutoff=0.5)
        return "not a valid choice"

    def bad_examples(self) -> list[Any]:
        if all(isinstance(c, str) for c in self.choices):
            return ["no-such-choice"]
        return [max(self.choices) * 2 + 1]


@dataclass(frozen=True)
class NameIn(Check):
    """A name registered in ``registry`` (read when checked, so names registered later count)."""

    registry: Mapping[str, Any] = field(hash=False, compare=False)

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(sorted(self.registry))

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str) and value in self.registry:
            return None
        hint = did_you_mean(value, list(self.registry), cutoff=0.5) if isinstance(value, str) else ""
        return "not a registered name" + hint

    def bad_examples(self) -> list[Any]:
        return ["no-such-name"]


@dataclass(frozen=True)
class Matches(Check):
    """A string matching ``pattern`` (whole string), described by ``description``."""

    pattern: str
    description: str

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return self.description

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, str) and re.fullmatch(self.pattern, value) else "not allowed"

    def bad_examples(self) -> list[Any]:
        return ["no such thing"]


@dataclass(frozen=True)
class NonEmptyText(Check):
    """A string with at least one visible character (names that become folder names)."""

    allowed: str = "a non-empty string"

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, str) and value.strip() else "empty"

    def bad_examples(self) -> list[Any]:
        return [""]


@dataclass(frozen=True)
class ListOf(Check):
    """A list whose items all pass ``item``; ``length`` fixes its length, ``min_length`` bounds it;
    ``ordered``: items non-decreasing (a range ``[low, high]``)."""

    item: Check | None = None
    length: int | None = None
    min_length: int = 0
    ordered: bool = False

    @property
    def allowed(self) -> str:  # type: ignore[override]
        if self.length is not None:
            size = f"a list of {self.length}"
        elif self.min_length == 1:
            size = "a non-empty list of"
        elif self.min_length:
            size = f"a list of at least {self.min_length}"
        else:
            size = "a list"
        if size.endswith(" of"):
            parts = [size.removesuffix(" of") + (f", each item {self.item.allowed}" if self.item else "")]
        else:
            parts = [size + (f" items, each {self.item.allowed}" if self.item else " items")]
        if self.ordered:
            parts.append("in increasing order")
        return ", ".join(parts)

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return "not a list"
        if self.length is not None and len(value) != self.length:
            return f"has {len(value)} item{'s' if len(value) != 1 else ''}, not {self.length}"
        if len(value) < self.min_length:
            return "is empty" if not value else f"has {len(value)} items"
        if self.item is not None:
            for i, item in enumerate(value):
                if self.item.problem(item) is not None:
                    return f"item {i} ({item!r}) is not {self.item.allowed}"
        if self.ordered and any(a > b for a, b in zip(value, value[1:])):
            return "is not in increasing order"
        return None

    def bad_examples(self) -> list[Any]:
        good = self._good_item()
        bad: list[Any] = []
        if self.length is not None:
            bad.append([good] * (self.length + 1))
        if self.min_length or self.length:
            bad.append([])
        if self.item is not None:
            n = self.length or max(self.min_length, 1)
            bad.append([self.item.bad_examples()[0]] * n)
        if self.ordered:
            n = self.length or 2
            bad.append([good * (n - i) for i in range(n)])
        return bad

    def _good_item(self) -> Any:
        if isinstance(self.item, AtLeast):
            return self.item.low + 1
        if isinstance(self.item, Between):
            return self.item.low
        return 1


@dataclass(frozen=True)
class ValuesOf(Check):
    """A mapping whose values all pass ``item`` (e.g. loss weights >= 0)."""

    item: Check

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"a mapping of values, each {self.item.allowed}"

    def problem(self, value: Any) -> str | None:
        for key, item in value.items():
            if self.item.problem(item) is not None:
                return f"entry {key!r} ({item!r}) is not {self.item.allowed}"
        return None

    def bad_examples(self) -> list[Any]:
        return [{"x": self.item.bad_examples()[0]}]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def setting(default: Any = MISSING, check: Check | None = None, *, factory: Any = MISSING) -> Any:
    """A schema field with a default (or a ``factory`` for mutable defaults) and the values it allows."""
    metadata = {"check": check} if check is not None else {}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_of(f: dataclasses.Field) -> Check | None:
    return f.metadata.get("check")


# ----------------------------------------------------------------------------------------------------
# building a section


def optional_dataclass(annotation: Any) -> type | None:
    """``X`` for an annotation ``X | None`` where ``X`` is a dataclass (an optional section), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0]
    return None


def key_hint(key: str, options: Sequence[str], prefix: str = "") -> str:
    """The closest valid key, or the list of valid keys under ``prefix``."""
    match = closest(key, options, cutoff=0.5)
    if match:
        return f" (did you mean {prefix + match[0]!r}?)"
    return f" (valid keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(options)})"


def check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return check_type(value, option, where)
            except UserError:
                pass
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(annotation))
        raise UserError(f"config key {where!r}: expected {names}, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise UserError(f"config key {where!r}: expected null, got {value!r}")
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {where!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {where!r}: expected a mapping, got {value!r}")
        _, item = typing.get_args(annotation)
        return {str(k): check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {where!r}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {where!r}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {where!r}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"config key {where!r}: expected a string, got {value!r}")
        return value
    return value


def check_value(value: Any, check: Check | None, where: str) -> None:
    """Refuse ``value`` (already type-checked) if ``check`` does not allow it; ``None`` always passes
    (an optional key left unset)."""
    if check is None or value is None:
        return
    problem = check.problem(value)
    if problem is not None:
        raise UserError(f"config key {where!r}: {value!r} {_phrase(problem)}; allowed: {check.allowed}")


def _phrase(problem: str) -> str:
    return problem if problem.startswith(("has ", "is ", "item ", "entry ")) else f"is {problem}"


def build_section(cls: type, values: Any, prefix: str) -> Any:
    """An instance of the schema dataclass ``cls`` from a mapping of YAML values, every key checked
    (unknown keys, types, allowed values); then the section's own cross-key ``validate(prefix)``."""
    if not isinstance(values, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key {prefix + key!r}{key_hint(key, list(fields), prefix)}")
        annotation = hints[key]
        sub = optional_dataclass(annotation)
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build_section(annotation, value or {}, f"{prefix}{key}.")
        elif sub is not None:
            kwargs[key] = None if value is None else build_section(sub, value, f"{prefix}{key}.")
        else:
            kwargs[key] = check_type(value, annotation, prefix + key)
            check_value(kwargs[key], check_of(fields[key]), prefix + key)
    section = cls(**kwargs)
    validate = getattr(section, "validate", None)
    if callable(validate):
        validate(prefix)
    return section


# ----------------------------------------------------------------------------------------------------
# YAML files, base chains and overrides


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in one YAML file (safe loader); every failure is one line naming the file."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from exc
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"config file {path} is not valid YAML{at}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return loaded or {}


# A model section names who builds it with ``source``; the keys of one source (a timm backbone, a
# torchvision builder's arguments) mean nothing to another, so a section given another source starts
# afresh from these keys of the section it replaces.
SOURCE_KEY = "source"
KEPT_ACROSS_SOURCES = ("num_classes",)


def switches_source(base: Any, update: Any) -> bool:
    """Whether mapping ``update`` gives a model section another ``source`` than mapping ``base``
    (a section without the key has the default source, ``segdistill``)."""
    return (
        isinstance(base, dict)
        and isinstance(update, dict)
        and SOURCE_KEY in update
        and update[SOURCE_KEY] != base.get(SOURCE_KEY, "segdistill")
    )


def fresh_section(base: dict[str, Any]) -> dict[str, Any]:
    """What a section keeps when it switches source: :data:`KEPT_ACROSS_SOURCES`."""
    return {k: base[k] for k in KEPT_ACROSS_SOURCES if k in base}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key (recursively); any other value replaces.
    A mapping that gives another ``source`` than the one it updates replaces it, keeping only
    :data:`KEPT_ACROSS_SOURCES` (:func:`switches_source`)."""
    merged = dict(base)
    for key, value in update.items():
        if switches_source(merged.get(key), value):
            merged[key] = deep_merge(fresh_section(merged[key]), value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_recipe(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The values of a recipe with its ``base:`` chain resolved: ``base: <path>`` (relative to the
    file that names it) is read first, then the file's own values are merged over it."""
    path = Path(path)
    here = path.resolve()
    if here in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, here))
        raise UserError(f"config file {path}: its 'base' chain loops ({cycle})")
    values = read_yaml(path)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise UserError(f"config file {path}: 'base' must be the path of another YAML file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise UserError(f"config file {path}: its base {base!r} is not a file ({base_path})")
    return deep_merge(read_recipe(base_path, (*_chain, here)), values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], the YAML value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value (e.g. train.iters=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> None:
    """``key=value`` overrides over ``values``, in order; a ``<section>.source=`` override that
    switches the source is applied first and starts the section afresh (:func:`fresh_section`),
    so ``model.source=torchvision model.arch=...`` works in any order."""
    parsed = [parse_override(text) for text in overrides]
    for keys, value in parsed:
        if keys[-1] == SOURCE_KEY:
            parent = values
            for part in keys[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if switches_source(parent, {SOURCE_KEY: value}):
                set_path(values, keys[:-1], fresh_section(parent))
    for keys, value in parsed:
        set_path(values, keys, value)


def set_path(values: dict[str, Any], path: list[str], value: Any) -> None:
    """``values[path[0]][path[1]]... = value``, creating mappings on the way."""
    node = values
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
