"""Models for controlled experiments: deep MLPs with a chosen activation and initialisation."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}
INITS = ("default", "xavier", "he")


def mlp(in_dim: int, out_dim: int, width: int, depth: int, activation: str = "relu",
        init: str = "default") -> nn.Sequential:
    """``depth`` hidden Linear+activation blocks of ``width``, then a Linear head.

    init: "default" (torch's), "xavier" (Glorot & Bengio 2010, normal) or "he" (He et al. 2015,
    fan-in, normal, with the activation's gain). Biases start at zero for xavier/he.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
        d = width
    layers.append(nn.Linear(d, out_dim))
    net = nn.Sequential(*layers)
    if init != "default":
        nonlin = {"relu": "relu", "leaky_relu": "leaky_relu", "elu": "relu", "gelu": "relu"}.get(
            activation, "linear"
        )
        for m in net:
            if isinstance(m, nn.Linear):
                if init == "xavier":
                    nn.init.xavier_normal_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity=nonlin)
                nn.init.zeros_(m.bias)
    return net
