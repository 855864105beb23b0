"""``make_clipper(name, **kwargs)``: build a clipper by name, for configs and the compare harness."""

from __future__ import annotations

from typing import Any

from .agc import AGC
from .autoclip import AutoClip
from .base import Clipper, NoClip
from .layer import LayerClipper
from .norm import NormClipper
from .value import ValueClipper
from .zclip import ZClip

CLIPPERS: dict[str, type[Clipper]] = {
    "none": NoClip,
    "norm": NormClipper,
    "value": ValueClipper,
    "layer": LayerClipper,
    "agc": AGC,
    "autoclip": AutoClip,
    "zclip": ZClip,
}


def make_clipper(name: str, **kwargs: Any) -> Clipper:
    """The clipper called ``name`` (one of ``CLIPPERS``) built with ``kwargs``."""
    try:
        cls = CLIPPERS[name]
    except KeyError:
        raise ValueError(f"unknown clipper {name!r}; choose one of {sorted(CLIPPERS)}") from None
    return cls(**kwargs)
