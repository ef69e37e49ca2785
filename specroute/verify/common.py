"""What every verifier shares: the result record, the shrunk model of a spec, hypothesis, tiny training.

A verifier is a function ``check(target, ctx) -> CheckResult``. It runs on small models derived from the
spec under test (:func:`shrink`: the spec's routing, gate kind, loss recipe and oracle settings, on 4
blocks of width 32 and short sequences), drives its property with hypothesis (:func:`run_property`) and
says pass / fail / skip with the value it measured and the value it expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from torch import Tensor

from specroute.losses import lm_loss
from specroute.model.decoder import Decoder
from specroute.spec.loader import deep_merge, dump_run
from specroute.spec.controller import G1Spec
from specroute.spec.models import RunSpec
from specroute.spec.training import TrainSpec
from specroute.train.device import Device
from specroute.train.stages import ControllerStage, DenseStage
from specroute.train.trainer import Trainer

PASS, FAIL, SKIP = "pass", "fail", "skip"

#: Shape of the shrunk model every dynamic verifier runs on (docs/STYLE.md: tiny configs, fast not shallow).
SHRUNK_LAYERS = 4
SHRUNK_WIDTH = 32
SHRUNK_HEADS = 2
SHRUNK_CONTEXT = 32
SHRUNK_VOCAB = 256  # the bytes tokenizer's
#: Where the verifiers' tiny trainings run.
CPU = Device("cpu", None)


@dataclass
class CheckResult:
    """One verifier's verdict on one spec (or arm).

    check: dotted id (``budget.topk_exact``); spec: what was checked (``a3.yaml:G1_lm``); status: pass |
    fail | skip; measured / expected: short human-readable values; detail: how, or why it failed (the
    falsifying example); values: the numbers behind it (for ``--json`` and the claim regression).
    """

    check: str
    spec: str
    status: str
    measured: str = ""
    expected: str = ""
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What a verifier checks: one arm's run spec at the chosen profile (``spec``), its label, and the
    same arm at the paper profile when the spec file defines one (for the analytic paper-scale checks)."""

    label: str
    spec: RunSpec
    paper: RunSpec | None = None


@dataclass(frozen=True)
class Context:
    """Run settings: ``examples`` per hypothesis property, ``train_steps`` of the tiny trainings."""

    examples: int = 8
    train_steps: int = 60


def result(check: str, target: Target, ok: bool, measured: str, expected: str, detail: str = "",
           **values: Any) -> CheckResult:
    return CheckResult(check, target.label, PASS if ok else FAIL, measured, expected, detail, values)


def skipped(check: str, target: Target, why: str) -> CheckResult:
    return CheckResult(check, target.label, SKIP, "", "", why)


# --------------------------------------------------------------------------------------------------
# shrunk specs


def _shrunk_layers(controlled: list[int], n_layers: int) -> list[int]:
    """The controlled-layer pattern on SHRUNK_LAYERS blocks: indices that fit are kept; if none do, the
    pattern is scaled down (deduplicated)."""
    keep = [i for i in controlled if i < SHRUNK_LAYERS]
    if keep or not controlled:
        return keep
    return sorted({min(SHRUNK_LAYERS - 1, i * SHRUNK_LAYERS // n_layers) for i in controlled})


def shrink(spec: RunSpec, update: dict[str, Any] | None = None, seq_len: int = 16, batch_size: int = 4) -> RunSpec:
    """A small variant of ``spec``: same routing (budget, enforcement, execution, estimator), gate kind and settings,
    loss weights and oracle settings, architecture options (norm, positions, FFN kind; grouped-query attention
    as one key/value head); 4 blocks x width 32, context 32, bytes vocabulary; the cheap FFN
    keeps its share of the full FFN's width; then ``update`` (nested keys) is merged and all re-validated."""
    raw = dump_run(spec)
    m, r = spec.model, spec.routing
    ffn = 4 * SHRUNK_WIDTH
    cheap = 0 if r.cheap_ffn_hidden == 0 else max(1, round(r.cheap_ffn_hidden * ffn / m.ffn_hidden))
    sizes = {"hidden": 16} if isinstance(spec.gate, G1Spec) else {"latent_dim": 8, "predictor_hidden": 16}
    gate: dict[str, Any] = {**raw["gate"], **sizes}  # every other gate field (bias, init, norm, target) kept
    raw["model"] = {**raw["model"], "n_layers": SHRUNK_LAYERS, "d_model": SHRUNK_WIDTH, "n_heads": SHRUNK_HEADS,
                    "context_length": SHRUNK_CONTEXT, "vocab_size": SHRUNK_VOCAB, "d_ff": None,
                    # grouped-query attention stays grouped: one key/value head for the two query heads
                    "n_kv_heads": None if m.kv_heads == m.n_heads else 1}
    raw["routing"] = {**raw["routing"], "controlled_layers": _shrunk_layers(r.controlled_layers, m.n_layers),
                      "cheap_ffn_hidden": cheap}
    raw["gate"] = gate
    raw["data"] = {"kind": "embedded"}
    raw["backbone"] = {"checkpoint": None, "train": {"seq_len": seq_len, "batch_size": batch_size}}
    raw["train"] = {**raw["train"], "seq_len": seq_len, "batch_size": batch_size, "lm_thresholds": []}
    return RunSpec.model_validate(deep_merge(raw, update or {}))


def tokens(B: int, T: int, seed: int, vocab: int = SHRUNK_VOCAB) -> Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# hypothesis


def run_property(body: Callable[..., None], examples: int, typical: list[dict[str, Any]] | None = None,
                 **strategies: st.SearchStrategy) -> str | None:
    """Run ``body(**drawn)`` over ``examples`` hypothesis examples (deterministic, no database, no
    shrinking: verifiers report the first failure fast), after the ``typical`` cases given explicitly
    (hypothesis starts from minimal inputs, which can be too small to show a fault). Returns None if every
    example passed, else the failure and its falsifying example as text."""

    def prop(**kwargs: Any) -> None:
        body(**kwargs)

    for case in reversed(typical or []):
        prop = example(**case)(prop)
    prop = given(**strategies)(prop)
    prop = settings(max_examples=max(1, examples), deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                    print_blob=False, report_multiple_bugs=False)(prop)

    try:
        prop()
    except Exception as e:  # noqa: BLE001 - any failure of the property is the verdict
        notes = [n for n in getattr(e, "__notes__", []) if "Falsifying" in n or "=" in n]
        message = f"{type(e).__name__}: {e}".strip()
        return " ".join([message[:400], *notes]).replace("\n", " ")
    return None


# --------------------------------------------------------------------------------------------------
# tiny training (a few dozen controller-only steps on real prose)


def prose_tokens() -> Tensor:
    """A fixed stream of byte tokens from real documentation prose that ships with Python (the
    Language Reference's topic pages), for the verifiers that need a model trained on something real."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def batch(stream: Tensor, B: int, T: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """B random windows of T + 1 tokens: inputs and next-token targets, (B, T) each."""
    start = torch.randint(0, len(stream) - T - 1, (B,), generator=generator)
    x = torch.stack([stream[s:s + T + 1] for s in start.tolist()])
    return x[:, :-1], x[:, 1:]


class ProseWindows:
    """The tiny trainings' :class:`specroute.train.trainer.Sampler`: :func:`batch` windows of ``T`` tokens."""

    def __init__(self, stream: Tensor, T: int):
        self.stream, self.T = stream, T

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return batch(self.stream, batch_size, self.T, generator)


def tiny_train(steps: int, lr: float, decay: bool = False, B: int = 8, T: int = 64) -> TrainSpec:
    """The tiny trainings' settings: ``steps`` AdamW steps (torch's default betas and eps) without weight
    decay or clipping, the learning rate ``lr`` constant, or with ``decay`` falling linearly to a tenth at
    the last step; B x T windows."""
    return TrainSpec.model_validate({
        "steps": steps, "batch_size": B, "seq_len": T, "grad_clip": None,
        "optimizer": {"lr_peak": lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0,
                      "min_lr_ratio": 0.1,
                      "schedule": "linear" if decay else "constant"},
    })


def train_controller(model: Decoder, spec: RunSpec, steps: int, seed: int, lr: float = 3e-3,
                     stream: Tensor | None = None, decay: bool = False) -> list[dict[str, float]]:
    """``steps`` study steps (:class:`specroute.train.trainer.Trainer`) of the spec's recipe on prose
    windows of ``spec.train``'s B x T (settings :func:`tiny_train`); windows and the recipe's sampling draw
    from one generator seeded ``seed``. Returns each step's record (loss parts, ``grad_norm``, ``lr``)."""
    stream = prose_tokens() if stream is None else stream
    train = tiny_train(steps, lr, decay, spec.train.batch_size, spec.train.seq_len)
    trainer = Trainer(ControllerStage(spec, model, CPU, train=train), ProseWindows(stream, train.seq_len),
                      torch.Generator().manual_seed(seed), CPU)
    return [trainer.advance() for _ in range(steps)]


def train_dense(model: Decoder, steps: int, seed: int, B: int, T: int, lr: float = 3e-3,
                stream: Tensor | None = None) -> float:
    """Pretrain a (dense or routed-forced-full) model's every parameter for ``steps`` study steps on prose
    windows (settings :func:`tiny_train`); returns the last step's LM loss (nats/token)."""
    stream = prose_tokens() if stream is None else stream
    model.requires_grad_(True)
    loss_of = ((lambda x, y: lm_loss(model(x, all_full=True).logits_BTV, y)) if model.routed else None)
    trainer = Trainer(DenseStage(model, tiny_train(steps, lr, B=B, T=T), CPU, loss_of=loss_of),
                      ProseWindows(stream, T), torch.Generator().manual_seed(seed), CPU)
    loss = math.nan
    for _ in range(steps):
        loss = trainer.advance()["lm"]
    return loss


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 10 ** -digits:
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{x:.{digits}f}" else f"{x}"
