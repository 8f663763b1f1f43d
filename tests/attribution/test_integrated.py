"""Integrated gradients against a known integral: a separable model with a sharp transition.

``y(x) = Σ_i tanh(s · x_i · u)`` is additively separable, so IG's attribution of token ``i`` is
exactly ``tanh(s · x_i · u) − tanh(s · b_i · u)`` (the path integral of each term alone). With
``s`` large the integrand is a spike near ``α = 0`` — the shape of an RMSNorm model's
zero-baseline path — which a fixed 16-point rule misses and the adaptive rule must resolve.
"""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution.integrated import gauss_legendre, integrate_adaptive, integrate_fixed
from interpipe.attribution.methods import quadrature

SHARP = 300.0


def _case(n: int = 3, pos: int = 5, d: int = 4):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, pos, d, generator=gen, dtype=torch.float64)
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    base = torch.zeros_like(x)

    def model_fn(inputs, ex):  # (rows, pos, d) -> (rows, 1): one output, the target 0
        return torch.tanh(SHARP * inputs @ u).sum(-1, keepdim=True)

    exact = torch.tanh(SHARP * x @ u) - torch.tanh(SHARP * base @ u)  # (n, pos)
    return model_fn, x, base, u, exact, torch.zeros(n, dtype=torch.long)


def test_adaptive_rule_reaches_the_known_integral():
    model_fn, x, base, _, exact, targets = _case()
    integral = integrate_adaptive(model_fn, base, x - base, targets, nodes=8, tolerance=1e-3, max_steps=4096, chunk=64)
    per_token = integral.total.sum(-1)  # (n, pos)
    torch.testing.assert_close(per_token, exact, atol=5e-3 * float(exact.abs().max()), rtol=0)
    assert (integral.relative_gap <= 1e-3).all()
    assert (integral.steps > 8).all() and (integral.steps <= 4096).all()  # it had to add steps, and recorded them
    torch.testing.assert_close(integral.f_input - integral.f_baseline, exact.sum(1))


def test_fixed_rule_misses_the_spike_and_the_gap_says_so():
    """The same case with Captum's 16-point Gauss-Legendre: far from the integral, and the gap shows it."""
    model_fn, x, base, _, exact, targets = _case()
    alphas, weights = quadrature("gausslegendre", 16)
    integral = integrate_fixed(model_fn, base, x - base, targets, alphas, weights, chunk=64)
    assert float(integral.relative_gap.max()) > 0.05
    error = (integral.total.sum(-1) - exact).abs().max()
    assert error > 0.1
    assert (integral.steps == 16).all()


def test_budget_caps_the_steps():
    model_fn, x, base, _, _, targets = _case()
    integral = integrate_adaptive(model_fn, base, x - base, targets, nodes=8, tolerance=1e-6, max_steps=40, chunk=64)
    assert (integral.steps <= 40).all()


def test_gauss_legendre_is_exact_for_polynomials():
    x, w = gauss_legendre(0.2, 0.7, 4)  # exact up to degree 7
    assert float((w * x ** 7).sum()) == pytest.approx((0.7 ** 8 - 0.2 ** 8) / 8, rel=1e-12)


def test_stage_ig_records_completeness(gpt2_case):
    """On a real (tiny) model the default IG meets its tolerance and records every example's gap."""
    from interpipe.attribution import AttributeSettings, attribute

    sm, batch, tokenizer = gpt2_case
    result = attribute(sm, batch, "integrated_gradients", AttributeSettings(), tokenizer)
    d = result.diagnostics
    assert len(d["relative_gap"]) == len(batch) and max(d["relative_gap"]) <= 0.05
    torch.testing.assert_close(torch.tensor(d["sum_scores"]).float(), result.scores.sum(1), rtol=1e-4, atol=1e-4)
