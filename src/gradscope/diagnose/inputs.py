"""input_scale: the model's input is far outside the usual range (raw pixels 0..255, unscaled
physical units), so the first layer's pre-activations, gradients and updates are scaled with it
(LeCun et al. 1998, "Efficient BackProp": inputs should be centred and of unit variance).

From the watch side: per recorded step the mean, std and max |x| of the first floating-point tensor
passed to the model. Flagged when the median over steps of max(|mean|, std) is above ``scale``.
Cheap: three scalars.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "inputs"
# Standardised inputs have |mean| ~0 and std ~1; images in [0, 1] have std ~0.3. Twenty is far past
# any normalisation (raw 8-bit pixels have mean ~100, std ~60).
SCALE = 20.0
DEFAULTS: dict[str, float] = {"scale": SCALE}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    mean, std = run.scalars.get("input_mean"), run.scalars.get("input_std")
    if mean is None or std is None:
        return []
    ok = np.isfinite(mean) & np.isfinite(std)
    if ok.sum() == 0:
        return []
    size = np.maximum(np.abs(mean[ok]), std[ok]).astype(np.float64)
    med = float(np.median(size))
    if med <= cfg["scale"]:
        return []
    ev = {"input_mean_median": float(np.median(mean[ok])), "input_std_median": float(np.median(std[ok])),
          "threshold": cfg["scale"]}
    amax = run.scalars.get("input_absmax")
    if amax is not None and np.isfinite(amax).any():
        ev["input_absmax_max"] = float(np.nanmax(amax))
    msg = (f"The inputs are far outside the usual range: mean {ev['input_mean_median']:.3g}, std "
           f"{ev['input_std_median']:.3g}" + (f", max |x| {ev['input_absmax_max']:.3g}" if "input_absmax_max" in ev
                                               else "")
           + " (a normalised input has mean ~0, std ~1). The first layer's outputs, gradients and "
           "updates all scale with them.")
    remedy = ("Normalise the inputs: subtract the per-channel mean and divide by the std of the training "
              "set (torchvision.transforms.Normalize, or x = (x - mean) / std); for 8-bit images at least "
              "divide by 255 (ToTensor does).")
    first, last = int(run.steps[0]), int(run.steps[-1])
    return [Finding("input_scale", Severity.WARNING, ["input"], (first, last), ev, msg, remedy)]
