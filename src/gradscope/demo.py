"""``gradscope demo``: the first thing a newcomer runs.

Two 12-layer MLPs learn the two-spirals task (see experiments.data.spirals), one with sigmoid and one
with LeakyReLU, same data, init scheme and optimizer; gradscope watches both. The sigmoid network's
early layers get gradients orders of magnitude smaller than its last layer (vanishing gradients);
the LeakyReLU network's do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gradscope.diagnose import diagnose
from gradscope.experiments.data import spirals
from gradscope.experiments.models import mlp
from gradscope.report.text import layer_summary, layer_table, verdict
from gradscope.run.reader import load_run
from gradscope.scope.core import watch


def train_one(log_dir: Path, activation: str, steps: int, depth: int, seed: int) -> dict[str, float]:
    """Train one MLP on spirals with gradscope watching; return final loss and accuracy."""
    torch.manual_seed(seed)
    x, y = spirals(2048, seed=seed)
    model = mlp(2, 2, width=64, depth=depth, activation=activation, init="xavier")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    with watch(model, opt, log_dir=log_dir, overwrite=True, flush_every=50) as scope:
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (128,), generator=g)
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            scope.log(loss=loss)
    with torch.no_grad():
        logits = model(x)
        return {"loss": float(loss_fn(logits, y)), "accuracy": float((logits.argmax(1) == y).float().mean())}


def run_demo(out: Path, steps: int = 300, depth: int = 12, seed: int = 0, console: Any = None) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: choose a directory")
    results = {}
    for act in ("sigmoid", "leaky_relu"):
        run_dir = out / act
        if console:
            console.print(f"training a {depth}-layer {act} MLP on two spirals for {steps} steps → {run_dir}")
        results[act] = train_one(run_dir, act, steps, depth, seed)
    if console is None:
        return
    for act, res in results.items():
        run = load_run(out / act)
        console.print(layer_table(run, title=f"{act}: gradient norm by depth ({run.num_steps} steps)"))
        rows = [r for r in layer_summary(run) if r["name"].endswith("weight")]
        ratio = rows[0]["median"] / rows[-1]["median"] if rows and rows[-1]["median"] else float("nan")
        findings = diagnose(run)
        kinds = sorted({f.kind for f in findings if f.severity.value != "info" and f.caused_by is None})
        console.print(f"  {act}: final loss {res['loss']:.3f}, accuracy {res['accuracy']:.1%}, "
                      f"median grad norm first/last layer = {ratio:.2e}")
        console.print(f"  verdict: {verdict(findings)}" + (f" ({', '.join(kinds)})" if kinds else "") + "\n")
    console.print(f"runs written to {out}/sigmoid and {out}/leaky_relu; "
                  f"inspect with: gradscope analyze {out}/sigmoid")
