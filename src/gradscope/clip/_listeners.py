"""Module-level listeners that receive every ClipResult: how a Scope can reuse the clip pass's stats.

``add_listener(fn)`` registers ``fn(parameters, result)``; every clipper and ``clip_grad_norm_`` call
it after clipping. With no listener registered the cost is one dict truth test per call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import ClipResult

_LISTENERS: dict[int, Callable] = {}
_IDS = itertools.count()


class ListenerHandle:
    """Returned by ``add_listener``; ``remove()`` unregisters the listener (idempotent)."""

    def __init__(self, key: int) -> None:
        self._key = key

    def remove(self) -> None:
        _LISTENERS.pop(self._key, None)


def add_listener(fn: Callable) -> ListenerHandle:
    """Call ``fn(parameters: list[Tensor], result: ClipResult)`` after every clip; keep the handle."""
    key = next(_IDS)
    _LISTENERS[key] = fn
    return ListenerHandle(key)


def active() -> bool:
    """Whether any listener is registered (then ``stats="auto"`` measures max |g| for it)."""
    return bool(_LISTENERS)


def notify(parameters: list, result: ClipResult) -> None:
    """Hand ``result`` to every registered listener, in registration order."""
    if _LISTENERS:
        for fn in list(_LISTENERS.values()):
            fn(parameters, result)
