"""torch's own clip tests, ported to gradscope.clip and run for every backend.

Source: pytorch/pytorch ``test/test_nn.py`` (commit 74f2fa66), ``TestNNDeviceType.test_clip_grad_norm``,
``test_clip_grad_value``, ``test_clip_grad_norm_error_if_nonfinite`` and
``test_clip_grad_norm_multi_device``: the same inputs, cases and assertions (``self.assertEqual`` is
``torch.testing.assert_close`` with its default tolerances), gradscope's functions in place of torch's.
``backend="triton"`` runs the fused kernels: compiled on CUDA when a GPU is present, else interpreted.
"""

from __future__ import annotations

import math
import warnings
from itertools import product

import pytest
import torch
from torch import inf, nan, nn

import gradscope.clip as C

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning"),
]


def assert_equal(actual, expected) -> None:
    """torch's ``TestCase.assertEqual`` for these values: ``assert_close`` at its default tolerances."""
    if not isinstance(actual, list):
        actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    torch.testing.assert_close(actual, expected, check_dtype=False, check_device=False, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("norm_type", [0.5, 1.5, 2, 4, "inf"])
def test_clip_grad_norm(norm_type, foreach, backend):
    lin = nn.Linear(10, 10).to(DEV)
    max_norm = 2

    def compute_norm(norm_type):
        norm_type = float(norm_type)
        if norm_type != inf:
            total_norm = 0
            for p in lin.parameters():
                total_norm += p.grad.data.abs().pow(norm_type).sum()
            return pow(total_norm, 1.0 / norm_type)
        return max(p.grad.data.abs().max() for p in lin.parameters())

    def compare_scaling(grads):
        p_scale = [p.grad.data.div(g).view(-1) for p, g in zip(lin.parameters(), grads, strict=True)]
        scale = torch.cat(p_scale)
        assert_equal(scale.std(), 0)
        return scale[0]

    grads = torch.arange(1.0, 101, device=DEV).view(10, 10), torch.ones(10, device=DEV).div(1000)
    for p, g in zip(lin.parameters(), grads, strict=True):
        p._grad = g.clone().view_as(p.data)
    norm_before = compute_norm(norm_type)
    norm = C.clip_grad_norm_(lin.parameters(), max_norm, norm_type=float(norm_type), foreach=foreach,
                             backend=backend)  # fmt: skip
    norm_after = compute_norm(norm_type)
    assert_equal(norm, norm_before)
    assert_equal(norm_after, max_norm)
    assert norm_after <= norm_before
    compare_scaling(grads)

    # decomposed APIs should behave as expected
    grads = torch.arange(1.0, 101, device=DEV).view(10, 10), torch.ones(10, device=DEV).div(1000)
    for p, g in zip(lin.parameters(), grads, strict=True):
        p._grad = g.clone().view_as(p)
    norm_before = compute_norm(norm_type)
    grads = [p.grad for p in lin.parameters()]
    total_norm = C.get_total_norm(grads, norm_type=float(norm_type), foreach=foreach, backend=backend)
    C.clip_grads_with_norm_(lin.parameters(), max_norm, total_norm, foreach=foreach, backend=backend)
    norm_after = compute_norm(norm_type)
    assert_equal(total_norm, norm_before)
    assert_equal(norm_after, max_norm)
    assert norm_after <= norm_before
    compare_scaling(grads)

    # Small gradients should be left unchanged
    grads = torch.rand(10, 10, device=DEV).div(10000), torch.ones(10, device=DEV).div(500)
    for p, g in zip(lin.parameters(), grads, strict=True):
        p.grad.data.copy_(g)
    norm_before = compute_norm(norm_type)
    norm = C.clip_grad_norm_(lin.parameters(), max_norm, norm_type=float(norm_type), foreach=foreach,
                             backend=backend)  # fmt: skip
    norm_after = compute_norm(norm_type)
    assert_equal(norm, norm_before)
    assert_equal(norm_before, norm_after)
    assert norm_after <= max_norm
    scale = compare_scaling(grads)
    assert_equal(scale, 1)

    # Should accept a single Tensor as input
    p1, p2 = torch.randn(10, 10, device=DEV), torch.randn(10, 10, device=DEV)
    g = torch.arange(1.0, 101, device=DEV).view(10, 10)
    p1._grad = g.clone()
    p2._grad = g.clone()
    C.clip_grad_norm_(p1, max_norm, norm_type=float(norm_type), foreach=foreach, backend=backend)
    C.clip_grad_norm_([p2], max_norm, norm_type=float(norm_type), foreach=foreach, backend=backend)
    assert_equal(p1.grad, p2.grad)

    # Should warning when parameters generator exhausted
    params = lin.parameters()
    for _ in params:
        pass
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        C.clip_grad_norm_(params, max_norm, norm_type=float(norm_type), foreach=foreach, backend=backend)
        assert len(w) == 1
        assert str(w[0].message) == "`parameters` is an empty generator, no gradient clipping will occur."


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_value(backend):
    lin = nn.Linear(10, 10).to(DEV)
    clip_value = 2.5
    clipper = C.ValueClipper(clip_value, backend=backend)
    grad_w = torch.arange(-50.0, 50, device=DEV).view(10, 10).div_(5)
    grad_b = torch.ones(10, device=DEV).mul_(2)
    for grad_list in [[grad_w, grad_b], [grad_w, None]]:
        for p, g in zip(lin.parameters(), grad_list, strict=True):
            p._grad = g.clone().view_as(p.data) if g is not None else g
        clipper(lin.parameters())
        for p in filter(lambda p: p.grad is not None, lin.parameters()):
            assert p.grad.data.max() <= clip_value
            assert p.grad.data.min() >= -clip_value

    # Should accept a single Tensor as input
    p1, p2 = torch.randn(10, 10, device=DEV), torch.randn(10, 10, device=DEV)
    g = torch.arange(-50.0, 50, device=DEV).view(10, 10).div_(5)
    p1._grad = g.clone()
    p2._grad = g.clone()
    clipper(p1)
    clipper([p2])
    assert_equal(p1.grad, p2.grad)


NORMS_POS = [0.1, 1, 2, 3.5, inf]
NORMS_NEG = [-0.1, -1, -2, -3.5]
NORMS_EXCEPT_0 = NORMS_POS + NORMS_NEG
NORMS_ALL = [*NORMS_EXCEPT_0, 0]
# (grad_only_one_elem, prefix_finite_grad_param, scalars, norms_nonfinite, norms_finite), as in torch
NONFINITE_CASES = [
    # Test errors from an infinite grad
    (False, False, [inf, -inf], NORMS_EXCEPT_0, [0]),
    (False, True, [inf, -inf], NORMS_POS, [*NORMS_NEG, 0]),
    (True, False, [inf, -inf], NORMS_POS, [*NORMS_NEG, 0]),
    (True, True, [inf, -inf], NORMS_POS, [*NORMS_NEG, 0]),
    # Test errors from a NaN grad
    (False, False, [nan], NORMS_EXCEPT_0, [0]),
    (False, True, [nan], NORMS_EXCEPT_0, [0]),
    (True, False, [nan], NORMS_EXCEPT_0, [0]),
    (True, True, [nan], NORMS_EXCEPT_0, [0]),
    # Test a grad that should never error
    (False, False, [2e22, -2e22], [], NORMS_ALL),
    (False, True, [2e22, -2e22], [], NORMS_ALL),
    (True, False, [2e22, -2e22], [], NORMS_ALL),
    (True, True, [2e22, -2e22], [], NORMS_ALL),
    # Test a grad that will overflow to inf for only some norm orders
    (False, False, [2e200, -2e200], [3.5, 2, -2, -3.5], [inf, 1, 0.1, 0, -1, -0.1]),
    (False, True, [2e200, -2e200], [3.5, 2], [*NORMS_NEG, inf, 1, 0.1, 0]),
    (True, False, [2e200, -2e200], [3.5, 2], [*NORMS_NEG, inf, 1, 0.1, 0]),
    (True, True, [2e200, -2e200], [3.5, 2], [*NORMS_NEG, inf, 1, 0.1, 0]),
]


def _gen_parameters(scalar, grad_only_one_elem, prefix_finite_grad_param):
    param = torch.ones(10, dtype=torch.float64, device=DEV, requires_grad=True)
    if grad_only_one_elem:
        param[1].mul(scalar).sum().backward()
    else:
        param.mul(scalar).sum().backward()
    if prefix_finite_grad_param:
        prefix_param = torch.ones(1, dtype=torch.float64, device=DEV, requires_grad=True)
        prefix_param.mul(1).sum().backward()
        return [prefix_param, param]
    return [param]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(NONFINITE_CASES)))
def test_clip_grad_norm_error_if_nonfinite(case, backend):
    grad_only_one_elem, prefix_finite_grad_param, scalars, norms_nonfinite, norms_finite = NONFINITE_CASES[case]

    def run_test_case(norm_type, error_if_nonfinite, scalar, is_norm_nonfinite):
        parameters = _gen_parameters(scalar, grad_only_one_elem, prefix_finite_grad_param)
        msg = f"norm_type {norm_type}, error_if_nonfinite {error_if_nonfinite}, scalar {scalar}"
        if is_norm_nonfinite and error_if_nonfinite:
            grads_before = [p.grad.clone() for p in parameters]
            with pytest.raises(RuntimeError, match=f"The total norm of order {float(norm_type)} for gradients"):
                C.clip_grad_norm_(parameters, 1, norm_type=norm_type, error_if_nonfinite=True, backend=backend)
            assert_equal([p.grad for p in parameters], grads_before)  # Grad should not change if error is thrown
        else:
            try:
                C.clip_grad_norm_(parameters, 1, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite,
                                  backend=backend)  # fmt: skip
            except RuntimeError as e:
                raise AssertionError(f"raised for a finite norm: {msg}") from e

    for error_if_nonfinite in [False, True]:
        for norm_type, scalar in product(norms_nonfinite, scalars):
            run_test_case(norm_type, error_if_nonfinite, scalar, True)
        for norm_type, scalar in product(norms_finite, scalars):
            run_test_case(norm_type, error_if_nonfinite, scalar, False)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="torch runs this test on two CUDA devices only")
@pytest.mark.parametrize("foreach", [False, True])
def test_clip_grad_norm_multi_device(foreach):
    class TestModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer1 = nn.Linear(10, 10)
            self.layer2 = nn.Linear(10, 10)

    test_model = TestModel()
    test_model.layer1.to("cuda:0")
    test_model.layer2.to("cuda:1")
    ref_model = TestModel().to("cuda:0")
    for norm_type in [2.0, math.inf]:
        for p in test_model.parameters():
            p.grad = torch.ones_like(p)
        for p in ref_model.parameters():
            p.grad = torch.ones_like(p)
        norm = C.clip_grad_norm_(test_model.parameters(), 0.5, norm_type=norm_type, foreach=foreach)
        expected = C.clip_grad_norm_(ref_model.parameters(), 0.5, norm_type=norm_type, foreach=foreach)
        assert_equal(norm, expected)
        for p, pe in zip(test_model.parameters(), ref_model.parameters(), strict=True):
            assert_equal(p.grad.to("cuda:0"), pe.grad)


def test_torch_itself_passes_the_ported_nonfinite_cases():
    """Control: the case table is torch's, so torch's own clip_grad_norm_ must behave as the table says."""
    for grad_only_one_elem, prefix, scalars, nonfinite, finite in NONFINITE_CASES:
        for norm_type, scalar in product(nonfinite, scalars):
            params = _gen_parameters(scalar, grad_only_one_elem, prefix)
            total = torch.nn.utils.clip_grad_norm_(params, 1, norm_type=norm_type)
            assert not torch.isfinite(total), (norm_type, scalar)
        for norm_type, scalar in product(finite, scalars):
            params = _gen_parameters(scalar, grad_only_one_elem, prefix)
            assert torch.isfinite(torch.nn.utils.clip_grad_norm_(params, 1, norm_type=norm_type))
