"""Checks of single YAML values, each failing with the file and the dotted key of the value:
what the dataset loader (`pipelines.datasets.loader`) builds its parser on."""
from __future__ import annotations

from datetime import date
from typing import Any

from pipelines.config import ConfigError


class YamlChecks:
    """`check(value, key)` returns the value typed, or raises ConfigError naming `file` and `key`."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, message: str):
        raise ConfigError(f"{self.file}: key '{key}' {message}")

    def mapping(self, value: Any, key: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                self.fail(f"{key}.{k}" if key else str(k), f"is not a known key (allowed here: {', '.join(sorted(allowed))})")
        for k in required:
            if k not in value:
                self.fail(f"{key}.{k}" if key else k, "is required")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"must be a number, got {value!r}")
        return float(value)

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(key, f"must be a non-empty list of names, got {value!r}")
        return tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))

    def day(self, value: Any, key: str) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(key, f"must be a date YYYY-MM-DD, got {value!r}")

    def length(self, value: Any, key: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(key, f"must be a whole number of characters, at least 1, got {value!r}")
        return value
