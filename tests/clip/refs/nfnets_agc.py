"""The NFNets authors' AGC: google-deepmind/deepmind-research ``nfnets/agc_optax.py`` (commit 68a1754),
``compute_norm``, ``unitwise_norm`` and ``my_clip``, with ``jnp`` replaced by numpy (float64).

Copyright 2020 DeepMind Technologies Limited, Apache License 2.0. Their parameters are laid out
input-major (Linear IO, conv HWIO); ``agc_torch_layout`` moves a torch tensor ([out, in] or
[out, in, h, w]) to that layout, applies their code, and moves the result back.
"""
import numpy as np


def compute_norm(x, axis, keepdims):
    """Axis-wise euclidean norm."""
    return np.sum(x ** 2, axis=axis, keepdims=keepdims) ** 0.5


def unitwise_norm(x):
    """Compute norms of each output unit separately, also for linear layers."""
    if len(np.squeeze(x).shape) <= 1:  # Scalars and vectors
        axis = None
        keepdims = False
    elif len(x.shape) in [2, 3]:  # Linear layers of shape IO or multihead linear
        axis = 0
        keepdims = True
    elif len(x.shape) == 4:  # Conv kernels of shape HWIO
        axis = [0, 1, 2,]
        keepdims = True
    else:
        raise ValueError(f'Got a parameter with shape not in [1, 2, 4]! {x}')
    return compute_norm(x, tuple(axis) if isinstance(axis, list) else axis, keepdims)


def my_clip(g_norm, max_norm, grad):
    """Applies my gradient clipping unit-wise."""
    trigger = g_norm < max_norm
    # This little max(., 1e-6) is distinct from the normal eps and just prevents
    # division by zero. It technically should be impossible to engage.
    clipped_grad = grad * (max_norm / np.maximum(g_norm, 1e-6))
    return np.where(trigger, grad, clipped_grad)


def adaptive_grad_clip(clip, eps, grad, param):
    """``update_fn`` of their ``adaptive_grad_clip`` for one parameter."""
    g_norm = unitwise_norm(grad)
    p_norm = unitwise_norm(param)
    max_norm = clip * np.maximum(p_norm, eps)
    return my_clip(g_norm, max_norm, grad)


def agc_torch_layout(clip, eps, grad, param):
    """Their AGC on torch tensors (float64 numpy in, out): to IO/HWIO, clip, back."""
    g, p = np.asarray(grad, dtype=np.float64), np.asarray(param, dtype=np.float64)
    if g.ndim == 2:
        return adaptive_grad_clip(clip, eps, g.T, p.T).T
    if g.ndim == 4:
        to, back = (2, 3, 1, 0), (3, 2, 0, 1)
        return adaptive_grad_clip(clip, eps, g.transpose(to), p.transpose(to)).transpose(back)
    return adaptive_grad_clip(clip, eps, g, p)
