"""Detector thresholds: the defaults from each detector module, overridable by key (``vanishing.ratio``).

Overrides come from ``--set KEY=VALUE`` or a config file (JSON or TOML), either nested
(``{"vanishing": {"ratio": 1e-4}}``) or flat (``{"vanishing.ratio": 1e-4}``). Unknown keys and values
that are not numbers raise ConfigError, whose message lists what is known.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Config = dict[str, dict[str, float]]


class ConfigError(ValueError):
    """A bad threshold override; the message names the key and what is allowed."""


def defaults(detectors: Iterable[Any]) -> Config:
    return {d.NAME: dict(d.DEFAULTS) for d in detectors}


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "on", "yes"):
            return 1.0
        if text in ("false", "off", "no"):
            return 0.0
        try:
            out = float(text)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected a number (e.g. {key}=1e-4)") from None
    else:
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__}")
    if math.isnan(out):
        raise ConfigError(f"{key}: NaN is not a threshold")
    return out


def flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; flat keys pass through."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve(base: Config, overrides: Mapping[str, Any] | None) -> Config:
    """A copy of ``base`` with ``overrides`` applied (nested or flat keys); unknown keys raise."""
    cfg = {k: dict(v) for k, v in base.items()}
    for key, value in flatten(overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in cfg:
            raise ConfigError(f"unknown detector {section!r} in {key!r}; known: {', '.join(sorted(cfg))}")
        if name not in cfg[section]:
            known = ", ".join(f"{section}.{n}" for n in sorted(cfg[section]))
            raise ConfigError(f"unknown setting {key!r}; {section} has: {known}")
        cfg[section][name] = _number(key, value)
    return cfg


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """``["vanishing.ratio=1e-4", ...]`` -> {"vanishing.ratio": "1e-4"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or "." not in key or not value.strip():
            raise ConfigError(f"--set {item!r}: expected DETECTOR.KEY=VALUE, e.g. vanishing.ratio=1e-4")
        out[key.strip()] = value.strip()
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (.json) or TOML (anything else) config file into a mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except (ValueError, json.JSONDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of DETECTOR.KEY settings")
    return data
