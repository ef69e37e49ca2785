"""torch.compile of the model (train.compile, specroute.train.compiled) on a tiny spec: the compiled
forward and training step equal eager within float tolerance, with static shapes under top-k."""

from __future__ import annotations

import time

import pytest
from helpers import tiny_spec, tokens
from torch.testing import assert_close

from specroute.losses import lm_loss
from specroute.model.decoder import build_model
from specroute.train.compiled import compile_model, is_compiled


@pytest.mark.slow  # compiling takes ~1 min on 2 idle cores, many on a loaded machine
def test_compiled_gather_step_equals_eager_without_recompiling():
    import torch._dynamo

    spec = tiny_spec({"routing": {"execution": "gather"}, "train": {"trainable": ["gate", "cheap_ffn", "backbone"]}})
    torch.manual_seed(0)
    eager = build_model(spec)
    compiled = build_model(spec)
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled)
    assert is_compiled(compiled) and not is_compiled(eager)
    torch._dynamo.reset()
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    for seed in range(2):  # a second batch: same shapes, no recompile
        idx = tokens(2, 16, seed=seed, vocab=spec.model.vocab_size)
        out_e, out_c = eager(idx), compiled(idx)
        assert_close(out_c.logits_BTV, out_e.logits_BTV, rtol=1e-4, atol=1e-5)
        for re, rc in zip(out_e.routing, out_c.routing):
            assert torch.equal(re.full_BT, rc.full_BT)
        loss_e, loss_c = lm_loss(out_e.logits_BTV, idx), lm_loss(out_c.logits_BTV, idx)
        loss_e.backward()
        loss_c.backward()
        for (name, pe), pc in zip(eager.named_parameters(), compiled.parameters()):
            if pe.grad is not None:
                assert_close(pc.grad, pe.grad, rtol=1e-3, atol=1e-6, msg=name)
        eager.zero_grad(), compiled.zero_grad()
        if seed == 0:
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the second batch reused them
    assert graphs > frames_before
    assert sorted(compiled.state_dict()) == sorted(eager.state_dict())  # checkpoints keep their names
    print(f"compile + 2 steps: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_compiled_threshold_routing_runs_its_gather_eager_without_recompiling_per_count():
    """Under threshold routing the full-token count changes from batch to batch: compile_model puts the
    gather step out of the graph (routing.eager_gather), so the outputs equal eager and nothing recompiles."""
    import torch._dynamo

    from specroute.model import routing

    spec = tiny_spec({"routing": {"execution": "gather", "budget": {"enforcement": "threshold"}},
                      "loss": {"budget": 1.0}})
    torch.manual_seed(0)
    eager = build_model(spec)
    compiled = build_model(spec)
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled)
    assert routing.eager_gather is not routing._eager_gather
    counts, graphs = [], []
    for seed in range(3):
        idx = tokens(2, 16, seed=seed, vocab=spec.model.vocab_size)
        out_e, out_c = eager(idx), compiled(idx)
        assert_close(out_c.logits_BTV, out_e.logits_BTV, rtol=1e-4, atol=1e-5)
        counts.append(tuple(int(r.full_BT.sum()) for r in out_e.routing))
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert len(set(counts)) > 1  # the batches route different numbers of tokens full
    assert graphs[1:] == graphs[:1] * 2  # ... through the graphs of the first batch
