"""rnn_gradient: gradients vanish or explode *through time* in a recurrent module (Bengio, Simard &
Frasconi 1994; Pascanu, Mikolov & Bengio 2013), judged on the gradient reaching the module's input
at the first time step against the last one (scalars ``rnn_grad_first/NAME``, ``rnn_grad_last/NAME``
from the watch side), not on its weights, which are one layer unrolled over time.

Flagged when first / last stays below ``ratio`` (or above 1 / ``ratio``) on ``persist`` of the steps;
vanishing is info only while the loss still improves (see plateau.py): the task may not need the
early inputs. An explosion past 1 / ``error_ratio`` (or past 1 / ``ratio`` at a step where the global
gradient norm is ``BURST`` times its median) is flagged even on a single step: one such step
under plain SGD throws the weights into saturation, after which the gradients vanish through time
instead (that vanishing is then its consequence, see link.py), so it never persists.
Cheap: two scalars per recurrent module.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose import plateau
from gradscope.diagnose._util import loss_trend, stretch
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "rnn"
# Three orders of magnitude between the first and the last time step: what the first inputs
# contribute to learning is then lost in the noise of the last ones (the depth check's RATIO).
RATIO = 1e-3
ERROR_RATIO = 1e-5
PERSIST = 0.5
# A step whose global gradient norm is this many times the run's median is an explosion, not noise.
BURST = 100.0
DEFAULTS: dict[str, float] = {"ratio": RATIO, "error_ratio": ERROR_RATIO, "persist": PERSIST}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    out = []
    trend = loss_trend(run)
    # Vanishing through time is only a fault when the loss does not learn: a GRU reading 20 tokens for
    # a label in the last few passes little gradient to the first ones, and rightly so.
    learning = trend is not None and not plateau.stuck(run, plateau.DEFAULTS)
    burst_steps = _burst_steps(run)
    for key in sorted(run.scalars):
        if not key.startswith("rnn_grad_first/"):
            continue
        name = key[len("rnn_grad_first/"):]
        first, last = run.scalars[key].astype(np.float64), run.scalars.get(f"rnn_grad_last/{name}")
        if last is None:
            continue
        ok = np.isfinite(first) & np.isfinite(last) & (last > 0)
        if ok.sum() == 0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(ok, first / np.where(ok, last, 1.0), np.nan)
        med = float(np.median(r[ok]))
        # past ``error_ratio``, or past ``ratio`` at a step where the whole model's gradient burst
        severe = ok & ((r > 1 / cfg["error_ratio"]) | ((r > 1 / cfg["ratio"]) & burst_steps))
        for side, hit in (("vanishing", ok & (r < cfg["ratio"])), ("exploding", ok & (r > 1 / cfg["ratio"]))):
            burst = side == "exploding" and bool(severe.any())
            if hit.sum() < cfg["persist"] * ok.sum() and not burst:
                continue
            if side == "exploding":
                med = float(np.median(r[hit]))  # over the exploding steps, not the whole run
            bad = med < cfg["error_ratio"] if side == "vanishing" else med > 1 / cfg["error_ratio"]
            sev = Severity.ERROR if bad else Severity.WARNING
            if side == "vanishing" and learning:
                sev = Severity.INFO  # early inputs matter little to this task: the loss still falls
            ev = {"direction": side, "ratio_first_last": med, "frac_steps": float(hit.sum() / ok.sum())}
            msg = (f"Gradients {'vanish' if side == 'vanishing' else 'explode'} through time in {name}: the "
                   f"gradient reaching its first time step is {med:.1e} times the one at its last "
                   f"time step on {ev['frac_steps']:.0%} of steps"
                   + ("; what the early inputs say is not learned." if side == "vanishing" else "."))
            remedy = (("Use a gated cell (nn.LSTM or nn.GRU) instead of a plain RNN, keep the forget-gate "
                       "bias positive (init to 1), shorten the sequences or use truncated BPTT, or let "
                       "the model see early inputs directly (attention, bidirectional).")
                      if side == "vanishing" else
                      ("Clip gradients (torch.nn.utils.clip_grad_norm_, max_norm ~1), initialise the "
                       "recurrent weights orthogonally (nn.init.orthogonal_ on weight_hh), and lower the "
                       "learning rate."))
            out.append(Finding("rnn_gradient", sev, [name],
                               stretch(run.steps, hit), ev, msg, remedy))
    return out


def _burst_steps(run: Run) -> np.ndarray:
    """Steps whose global gradient norm is ``BURST`` times the run's median (all False without one)."""
    gn = run.scalars.get("grad_norm")
    out = np.zeros(run.num_steps, bool)
    if gn is None or gn.shape != out.shape:
        return out
    gn = np.where(np.isfinite(gn), gn.astype(np.float64), np.nan)
    if np.isnan(gn).all():
        return out
    return gn > BURST * float(np.nanmedian(gn))
