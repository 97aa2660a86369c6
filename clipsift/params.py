"""Declared, validated filter parameters (scikit-learn style: stored unchanged, checked in one place)."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

from clipsift.errors import ParamError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INT_LIMIT = 1 << 63  # integers are handed to numpy, torch and faiss: keep them in int64
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3  # a pathologically nested TOML value prints as {...}, never recursing


def _show(value: Any) -> str:
    """Short, recursion-safe repr of a user-given value for one-line messages."""
    return _REPR.repr(value)


@dataclass(frozen=True)
class Param:
    """One parameter: name, type (int, float, str, bool), default, help, optional choices/bounds."""

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    @property
    def nullable(self) -> bool:
        return self.default is None

    def allowed(self) -> str:
        """The values this parameter takes, for error messages."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.type is bool:
            text = "true or false"
        elif self.type in (int, float):
            kind = "an integer" if self.type is int else "a finite number"
            if self.min is not None and self.max is not None:
                text = f"{kind} in [{self.min}, {self.max}]"
            elif self.min is not None:
                text = f"{kind} >= {self.min}"
            elif self.max is not None:
                text = f"{kind} <= {self.max}"
            else:
                text = kind
        else:
            text = "a string"
        return text + (" (or none)" if self.nullable else "")

    def _bad(self, owner: str, value: Any, why: str) -> ParamError:
        prefix = f"{owner}: " if owner else ""
        return ParamError(f"{prefix}parameter {self.name}={_show(value)} {why}; allowed: {self.allowed()}")

    def parse(self, text: str, owner: str = "") -> Any:
        """Convert a command-line string (``--set name=text``)."""
        if self.nullable and text.strip().lower() in {"none", "null", ""}:
            return None
        if self.type is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise self._bad(owner, text, "is not a boolean (true/false, yes/no, on/off, 1/0)")
        if self.type is str:
            return text
        try:
            return self.type(text)
        except (ValueError, OverflowError):
            raise self._bad(owner, text, f"is not a valid {self.type.__name__}") from None

    def check(self, value: Any, owner: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ParamError(f"{owner}: parameter {self.name} must not be empty; allowed: {self.allowed()}")
        if isinstance(value, str) and self.type is not str:
            value = self.parse(value, owner)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise self._bad(owner, value, "is out of range") from None
        if self.type is bool and not isinstance(value, bool):
            raise self._bad(owner, value, "is not true or false")
        if self.type in (int, float) and (isinstance(value, bool) or not isinstance(value, self.type)):
            raise self._bad(owner, value, f"is not {'an integer' if self.type is int else 'a number'}")
        if self.type is str and not isinstance(value, str):
            raise self._bad(owner, value, "is not a string")
        if self.type is float and not math.isfinite(value):
            raise self._bad(owner, value, "is not a finite number")
        if self.type is int and not -_INT_LIMIT <= value < _INT_LIMIT:
            raise self._bad(owner, value, "does not fit in 64 bits")
        if self.choices is not None and value not in self.choices:
            raise self._bad(owner, value, "is not a valid choice")
        if self.min is not None and value < self.min:
            raise self._bad(owner, value, f"is below its minimum {self.min}")
        if self.max is not None and value > self.max:
            raise self._bad(owner, value, f"is above its maximum {self.max}")
        return value

    def describe(self) -> dict:
        out = {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


def resolve_params(declared: tuple[Param, ...], given: dict, owner: str) -> dict:
    """Defaults overlaid with ``given``; unknown names and bad values raise ParamError."""
    if not isinstance(given, dict):
        raise ParamError(f"{owner}: parameters must be a table of name = value, got {_show(given)}")
    by_name = {p.name: p for p in declared}
    unknown = sorted(map(str, set(given) - set(by_name)))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ParamError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; it takes: {known}")
    return {p.name: p.check(given.get(p.name, p.default), owner) for p in declared}


def parse_assignments(items: list[str], declared: tuple[Param, ...], owner: str) -> dict:
    """Parse ``key=value`` strings against the declared parameters (each key at most once)."""
    by_name = {p.name: p for p in declared}
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ParamError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in by_name:
            known = ", ".join(by_name) or "none"
            raise ParamError(f"{owner}: unknown parameter {key!r}; it takes: {known}")
        if key in out:
            raise ParamError(f"{owner}: parameter {key} given twice (--set {key}=...); give it once")
        out[key] = by_name[key].parse(text, owner)
    return out
