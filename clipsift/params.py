"""Declared, validated filter parameters (scikit-learn style: stored unchanged, checked in one place)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipsift.errors import ParamError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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

    def parse(self, text: str) -> Any:
        """Convert a command-line string (``--set name=text``)."""
        if self.nullable and text.strip().lower() in {"none", "null", ""}:
            return None
        try:
            if self.type is bool:
                low = text.strip().lower()
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
                raise ValueError(text)
            return self.type(text)
        except ValueError:
            raise ParamError(f"parameter {self.name}: {text!r} is not a valid {self.type.__name__}") from None

    def check(self, value: Any, owner: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ParamError(f"{owner}: parameter {self.name} must not be empty")
        if isinstance(value, str) and self.type is not str:
            value = self.parse(value)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is bool and not isinstance(value, bool):
            raise ParamError(f"{owner}: parameter {self.name} must be true or false, got {value!r}")
        if self.type in (int, float) and (isinstance(value, bool) or not isinstance(value, self.type)):
            raise ParamError(f"{owner}: parameter {self.name} must be {self.type.__name__}, got {value!r}")
        if self.type is str and not isinstance(value, str):
            raise ParamError(f"{owner}: parameter {self.name} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"{owner}: parameter {self.name}={value!r}; choose one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min:
            raise ParamError(f"{owner}: parameter {self.name}={value!r} is below its minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ParamError(f"{owner}: parameter {self.name}={value!r} is above its maximum {self.max}")
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
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ParamError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; it takes: {known}")
    return {p.name: p.check(given.get(p.name, p.default), owner) for p in declared}


def parse_assignments(items: list[str], declared: tuple[Param, ...], owner: str) -> dict:
    """Parse ``key=value`` strings against the declared parameters."""
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
        out[key] = by_name[key].parse(text)
    return out
