"""The chunked LM head and cross-entropy (specroute/losses.py ``head_token_ce``): the same values and gradients as
the whole logits' cross-entropy, float32 under bf16 autocast, logits never held whole for the backward, and
the recipe's terms (LM loss, oracle labels, held-out LM) unchanged by the chunk size."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_spec, tokens
from torch.testing import assert_close

from specroute import losses
from specroute.losses import compute_losses, head_token_ce, oracle_labels, per_token_labels, token_ce
from specroute.model.decoder import build_model

V = 256


def model_and_hidden(routed: bool = False, trainable: bool = True):
    spec = tiny_spec({"routing": {"controlled_layers": [1, 2]}, "loss": {"util": 1.0, "rank": 1.0}})
    torch.manual_seed(0)
    model = build_model(spec, routed=routed)
    if not trainable:
        model.set_trainable(["gate", "cheap_ffn"])
    return spec, model


@pytest.mark.parametrize("chunk_tokens", [1, 5, 16, 10_000])
def test_chunked_cross_entropy_equals_the_whole_logits_values_and_gradients(chunk_tokens):
    _, model = model_and_hidden()
    idx, targets = tokens(3, 11, seed=1), tokens(3, 11, seed=2)
    h_ref = model(idx).h_BTD.detach().requires_grad_()
    h = h_ref.detach().clone().requires_grad_()
    want = token_ce(model.head(h_ref), targets)
    (want * torch.linspace(0.1, 1.0, 33).view(3, 11)).sum().backward()  # any upstream gradient, not only a mean
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    got = head_token_ce(model, h, targets, chunk_logits=chunk_tokens * V)
    (got * torch.linspace(0.1, 1.0, 33).view(3, 11)).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (3, 11)
    assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-7)
    assert set(want_grads) == {n for n, p in model.named_parameters() if p.grad is not None} >= {"wte.weight", "ln_f.weight"}
    for n, g in want_grads.items():
        assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-5, atol=1e-7)


def test_the_cross_entropy_is_float32_under_bf16_autocast():
    _, model = model_and_hidden()
    idx, targets = tokens(2, 9), tokens(2, 9, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model(idx).h_BTD
        for chunk in (4, 10_000):
            got = head_token_ce(model, h, targets, chunk_logits=chunk * V)
            assert got.dtype == torch.float32
            assert_close(got, token_ce(model.head(h), targets), rtol=0, atol=0)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while ``fn`` runs (its graph's memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_chunks_keep_no_logits_for_the_backward():
    _, model = model_and_hidden(trainable=False)
    idx, targets = tokens(4, 32), tokens(4, 32, seed=4)
    h = model(idx).h_BTD.detach().requires_grad_()
    logits_bytes = 4 * 32 * V * 4
    whole = saved_bytes(lambda: token_ce(model.head(h), targets).mean())
    chunked = saved_bytes(lambda: head_token_ce(model, h, targets, chunk_logits=16 * V).mean())
    assert whole >= logits_bytes  # the whole logits (float32) are kept for the backward ...
    assert chunked < logits_bytes / 4  # ... chunks keep their inputs only (the hidden state and targets)


def test_the_recipe_is_the_same_with_one_chunk_or_many(monkeypatch):
    spec, model = model_and_hidden(routed=True)
    idx, targets = tokens(2, 16, seed=5), tokens(2, 16, seed=6)
    out = model(idx)
    runs = {}
    for chunk in (losses.LM_HEAD_CHUNK_LOGITS, 3 * V):
        monkeypatch.setattr(losses, "LM_HEAD_CHUNK_LOGITS", chunk)
        terms = compute_losses(model, idx, targets, spec, torch.Generator().manual_seed(0))
        runs[chunk] = (terms.parts, oracle_labels(model, out, targets, [1, 2], "off_policy"),
                       per_token_labels(model, out, targets, [2], "off_policy", 4, torch.Generator().manual_seed(1)))
    (p1, u1, e1), (p2, u2, e2) = runs.values()
    assert p1.keys() == p2.keys() == {"lm", "util", "rank"}
    for k in p1:
        assert p1[k] == pytest.approx(p2[k], rel=1e-5)
    for layer in u1:
        assert_close(u1[layer], u2[layer], rtol=1e-5, atol=1e-6)
    assert_close(e1[2].u_BS, e2[2].u_BS, rtol=1e-5, atol=1e-6)


def test_the_decoders_logits_are_its_head_of_the_final_hidden_state():
    _, model = model_and_hidden(routed=True)
    out = model(tokens(2, 5))
    assert out.logits_BTV is out.logits_BTV  # computed once
    assert_close(out.logits_BTV, model.head(out.h_BTD), rtol=0, atol=0)
