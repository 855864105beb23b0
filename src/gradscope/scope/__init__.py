"""The watch side: ``Scope`` and ``watch`` (core.py) composed of parts that share one ``StepState``
(step.py): the parameter side (params.py), the module side (modules.py, with accumulators.py) and the
step buffers (buffers.py); hooks.py holds stateless hook factories, rows.py the row plan, amp.py and
distributed.py the AMP and torch.distributed helpers, setup.py what watch() does before attaching.
Named ``scope`` because ``gradscope.watch`` is the public function: a subpackage of that name would
shadow it once imported."""

from gradscope.scope.core import Scope, watch

__all__ = ["Scope", "watch"]
