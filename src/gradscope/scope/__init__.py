"""The watch side: ``Scope`` and ``watch`` with the parts they are built from (hooks, accumulators,
step buffers, the row plan, AMP and distributed helpers). Named ``scope`` because ``gradscope.watch``
is the public function: a subpackage of that name would shadow it once imported."""

from gradscope.scope.core import Scope, watch

__all__ = ["Scope", "watch"]
