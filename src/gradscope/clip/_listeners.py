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
        _WANTS.pop(self._key, None)


_WANTS: dict[int, Callable[[], bool]] = {}


def add_listener(fn: Callable, wants_full: Callable[[], bool] | None = None) -> ListenerHandle:
    """Call ``fn(parameters: list[Tensor], result: ClipResult)`` after every clip; keep the handle.

    ``wants_full()``, when given, says whether this listener uses max |g| at the coming clip (a Scope
    recording every N-th step does not on the others); without it the listener always does.
    """
    key = next(_IDS)
    _LISTENERS[key] = fn
    if wants_full is not None:
        _WANTS[key] = wants_full
    return ListenerHandle(key)


def active() -> bool:
    """Whether a listener wants full statistics now (then ``stats="auto"`` measures max |g| for it)."""
    return any(_WANTS.get(key, _always)() for key in _LISTENERS)


def _always() -> bool:
    return True


def notify(parameters: list, result: ClipResult) -> None:
    """Hand ``result`` to every registered listener, in registration order."""
    if _LISTENERS:
        for fn in list(_LISTENERS.values()):
            fn(parameters, result)
