"""Composition scores against TransformerLens's ``composition_scores`` on the same matrices."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import composition_scores

from interpipe.components import Component
from interpipe.weights.common import HeadWeights
from interpipe.weights.composition import (component_composition, component_matrix_composition, factored_svd,
                                           head_components, matrix_composition, top_channels)


@pytest.fixture()
def weights() -> HeadWeights:
    g = torch.Generator().manual_seed(0)
    L, H, d, dh = 3, 2, 16, 4
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return HeadWeights(r(L, H, d, dh), r(L, H, d, dh), r(L, H, d, dh), r(L, H, dh, d))


def rank1(direction_in, s, direction_out) -> FactoredMatrix:
    return FactoredMatrix(direction_in[:, None] * s.sqrt(), s.sqrt() * direction_out[None, :])


def test_component_pairs_match_transformer_lens(weights):
    comps = head_components(weights, k=3)
    for mode in ("Q", "K", "V"):
        ours = component_composition(comps, mode)
        for (ls, hs, cs, lr, hr, cr) in [(0, 0, 0, 1, 1, 2), (0, 1, 2, 2, 0, 0), (1, 1, 1, 2, 1, 1)]:
            left = rank1(comps.ov_in[ls, hs, cs], comps.ov_s[ls, hs, cs], comps.ov_out[ls, hs, cs])
            if mode == "V":
                right = rank1(comps.ov_in[lr, hr, cr], comps.ov_s[lr, hr, cr], comps.ov_out[lr, hr, cr])
            else:
                right = rank1(comps.qk_q[lr, hr, cr], comps.qk_s[lr, hr, cr], comps.qk_k[lr, hr, cr])
                right = right.T if mode == "K" else right
            ref = composition_scores(left, right, broadcast_dims=False)
            assert float(ours[ls, hs, cs, lr, hr, cr]) == pytest.approx(float(ref), rel=1e-9)


def test_component_vs_whole_matrix_matches_transformer_lens(weights):
    comps = head_components(weights, k=4)
    qk = FactoredMatrix(weights.W_Q, weights.W_K.transpose(-2, -1))  # (L, H, d, d)
    ov = FactoredMatrix(weights.W_V, weights.W_O)
    receivers = {"Q": qk, "K": qk.T, "V": ov}
    for mode, right in receivers.items():
        ours = component_matrix_composition(weights, comps, mode)
        for (ls, hs, cs, lr, hr) in [(0, 0, 0, 1, 0), (0, 1, 3, 2, 1), (1, 0, 2, 2, 0)]:
            left = rank1(comps.ov_in[ls, hs, cs], comps.ov_s[ls, hs, cs], comps.ov_out[ls, hs, cs])
            ref = composition_scores(left, right[lr, hr], broadcast_dims=False)
            assert float(ours[ls, hs, cs, lr, hr]) == pytest.approx(float(ref), rel=1e-9)
        assert float(ours[2, 0, 0, 1, 0]) == 0.0  # receivers before the sender are masked


def test_whole_matrix_composition_matches_transformer_lens(weights):
    ov = FactoredMatrix(weights.W_V, weights.W_O)
    qk = FactoredMatrix(weights.W_Q, weights.W_K.transpose(-2, -1))
    ref = composition_scores(ov[0], qk[1], broadcast_dims=True)  # (H_send, H_recv)
    ours = matrix_composition(weights.W_V[0][:, None], weights.W_O[0][:, None],
                              weights.W_Q[1][None], weights.W_K[1].transpose(-2, -1)[None])
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_factored_svd_orders_and_reconstructs(weights):
    U, S, V = factored_svd(weights.W_V, weights.W_O)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), weights.W_V @ weights.W_O)
    assert bool((S[..., :-1] >= S[..., 1:]).all())


def test_top_channels_are_sorted_and_causal(weights):
    frame = top_channels(head_components(weights, k=2), n=10)
    assert len(frame) == 10 and frame["score"].is_monotonic_decreasing
    assert all(Component.parse(s).layer < Component.parse(r).layer for s, r in zip(frame["sender"], frame["receiver"]))


def test_folded_weights_match_transformer_lens_processing(tiny_loaded, tiny_toy_folder):
    """LN folding and centring agree with TransformerLens's own weight processing (compatibility mode)."""
    from interpipe.weights.common import boot_bridge, folded_head_weights

    ours = folded_head_weights(boot_bridge(tiny_loaded.model, tiny_loaded.tokenizer, tiny_toy_folder), tiny_loaded.model)
    ref = boot_bridge(tiny_loaded.model, tiny_loaded.tokenizer, tiny_toy_folder)
    ref.enable_compatibility_mode()
    with torch.no_grad():
        torch.testing.assert_close(ours.W_V @ ours.W_O, ref.OV.AB.float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.W_Q @ ours.W_K.transpose(-2, -1), ref.QK.AB.float(), rtol=1e-4, atol=1e-5)


def test_bad_inputs(weights):
    comps = head_components(weights, k=1)
    with pytest.raises(ValueError, match="mode"):
        component_composition(comps, "X")
    with pytest.raises(ValueError, match="mode"):
        component_matrix_composition(weights, comps, "O")
    with pytest.raises(ValueError, match="at least one"):
        head_components(weights, k=0)
