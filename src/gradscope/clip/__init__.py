"""Gradient clipping strategies on per-tensor statistics, with a fused Triton global-norm path.

``clip_grad_norm_`` is a drop-in for torch's, with its primitives ``get_total_norm`` and
``clip_grads_with_norm_``; the clippers share one interface,
``clipper(parameters) -> ClipResult``, and ``make_clipper(name, **kwargs)`` builds them by name.
``add_listener(fn)`` lets a listener (a Scope) receive every ClipResult. ``stats="norm"`` measures
per-tensor norms and non-finite counts in the norm pass; ``"full"`` adds max |g|; ``"auto"`` (default)
is ``"full"`` while a listener is registered, else ``"norm"``.
"""

from ._listeners import ListenerHandle, add_listener
from .agc import AGC
from .autoclip import AutoClip
from .base import Clipper, NoClip
from .factory import CLIPPERS, make_clipper
from .fold import fold_step
from .layer import LayerClipper
from .norm import NormClipper, clip_grad_norm_, clip_grads_with_norm_, get_total_norm
from .result import ClipResult, TensorStats
from .value import ValueClipper
from .zclip import ZClip

__all__ = [
    "AGC",
    "CLIPPERS",
    "AutoClip",
    "ClipResult",
    "Clipper",
    "ListenerHandle",
    "NoClip",
    "NormClipper",
    "LayerClipper",
    "TensorStats",
    "ValueClipper",
    "ZClip",
    "add_listener",
    "clip_grad_norm_",
    "clip_grads_with_norm_",
    "fold_step",
    "get_total_norm",
    "make_clipper",
]
