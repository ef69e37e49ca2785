"""What the tests share: the tiny specs, token ids, the shipped specs' folder, the micro profile of the A3
study and a file writer. (Test modules import this, never each other.)

``tiny_spec(update)`` builds a tiny spec (4 blocks x width 32, bytes vocabulary (256), context 32) by
merging ``update`` (nested keys of RunSpec) into the base and validating again, so every test spec is a
valid spec by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from specroute.spec import Resolved, load_study
from specroute.spec.loader import deep_merge
from specroute.spec.models import RunSpec

#: The shipped specs' folder (specs/).
SPECS = Path(__file__).resolve().parent.parent / "specs"

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"n_layers": 4, "d_model": 32, "n_heads": 2, "context_length": 32, "vocab_size": 256, "d_ff": 64},
    "routing": {"controlled_layers": [1, 2], "cheap_ffn_hidden": 16, "execution": "masked"},
    "gate": {"kind": "G1", "hidden": 16},
    "backbone": {"train": {"seq_len": 16, "batch_size": 2}},
    "train": {"seq_len": 16, "batch_size": 2},
}

G3: dict[str, Any] = {"gate": {"kind": "G3", "latent_dim": 8, "predictor_hidden": 16}}

#: A micro profile of the A3 study (``--set`` items): 2 blocks x width 32, 30 backbone steps, 12 controller
#: steps.
MICRO = [
    "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.context_length=32",
    "routing.controlled_layers=[1]", "routing.cheap_ffn_hidden=16",
    "gates.G1.hidden=8", "gates.G3.latent_dim=4", "gates.G3.predictor_hidden=8",
    "backbone.train.steps=30", "backbone.train.batch_size=4", "backbone.train.seq_len=32",
    "backbone.train.eval_every=10", "backbone.train.eval_batches=2", "backbone.train.checkpoint_every=10",
    "train.steps=12", "train.batch_size=4", "train.seq_len=32", "train.eval_every=4", "train.eval_batches=2",
    "train.checkpoint_every=5", "train.lm_thresholds=[4.5, 3.5]", "seeds=[0, 1]",
]

#: The repository root (where a subprocess runs ``python -m specroute.cli``).
ROOT = Path(__file__).resolve().parent.parent
#: ``specroute run`` of the micro A3 study's G1_lm arm (add --seed, --out, --cache-dir, ...).
RUN_ARGS = ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", *[x for s in MICRO for x in ("--set", s)],
            "--arm", "G1_lm"]
#: A process that holds the lock of the folder given as its first argument (its second: what the folder is)
#: until it is killed; it prints "held" once it holds it.
HOLDER = ("import sys, time; from pathlib import Path; from specroute.locks import hold_lock\n"
          "with hold_lock(Path(sys.argv[1]), sys.argv[2]):\n"
          "    print('held', flush=True); time.sleep(300)\n")


def tiny_spec(update: dict[str, Any] | None = None) -> RunSpec:
    """The tiny run spec with ``update`` merged in (a gate ``kind`` change replaces the gate)."""
    return RunSpec.model_validate(deep_merge(TINY, update or {}))


def tokens(B: int, T: int, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    """Deterministic random token ids (B, T)."""
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def micro(*extra: str) -> Resolved:
    """The A3 study, smoke profile, with :data:`MICRO` and then ``extra`` (``--set`` items) applied."""
    return load_study(SPECS / "a3.yaml", "smoke", [*MICRO, *extra])


#: Keys of a seed's summary, an arm's means or a run's records that are timings, not metrics: what differs
#: between two equal runs (wall time, throughput and MFU, runs at once).
TIMING_KEYS = ("wall_s", "speed", "concurrent_runs", "tokens_per_s", "mfu")


def strip_wall(seed_summary: dict) -> dict:
    """A seed's summary (or an arm's means) without its timings (:data:`TIMING_KEYS`)."""
    return {k: v for k, v in seed_summary.items() if k not in TIMING_KEYS}


def write(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``folder/name``; returns the path."""
    path = folder / name
    path.write_text(text)
    return path


def assert_exit_2(result, *fragments: str, prefix: str = "error: invalid spec\n") -> None:
    """A CliRunner result of a refused command: exit 2, nothing on stdout, no traceback, a short message on
    stderr starting with ``prefix`` and holding every fragment."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith(prefix), result.stderr
    assert len(result.stderr) < 4000, len(result.stderr)
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def check_bad_spec(folder: Path, text: str, where: str, field: str, words: str) -> None:
    """``specroute validate`` on a spec file ``text`` (written as ``folder/bad.yaml``; the caller's working
    folder) exits 2 naming the file with ``where`` (``:line:``, or another fragment), ``field`` and ``words``."""
    from typer.testing import CliRunner

    from specroute.cli import app

    write(folder, "bad.yaml", text)
    result = CliRunner().invoke(app, ["validate", "bad.yaml"])
    fragments = [f"bad.yaml{where}" if where.startswith(":") else where, words]
    if field:
        fragments.append(f": {field}: ")
    assert_exit_2(result, *fragments)


def lone_and_resumed(resolved: Resolved, arm: str, folder: Path, budgets: tuple[int, ...]):
    """Seed 0 of ``arm`` run once without a break (``folder/ref``), and once (``folder/resumed``) killed by
    each step budget in ``budgets`` in turn (a simulated crash: nothing saved at that step) and resumed to the
    end; each with its own cache. Returns the two :class:`specroute.train.StudyResult` and the run's last
    checkpoint (``ckpt/latest``) as the crashes left it."""
    import pytest

    from specroute.train import Interrupted, StudyOptions, run_study

    def options(out: Path, cache: Path, **kw: Any) -> StudyOptions:
        return StudyOptions(out=out, arms=[arm], seeds=[0], device="cpu", cache=cache, workers=1, **kw)

    ref = run_study(resolved, options(folder / "ref", folder / "cache_ref"))
    out, cache = folder / "resumed", folder / "cache_resumed"
    for budget in budgets:
        with pytest.raises(Interrupted):
            run_study(resolved, options(out, cache, resume=True, max_steps_this_session=budget))
    latest = (out / "runs" / arm / "seed0" / "ckpt" / "latest").read_text()
    return ref, run_study(resolved, options(out, cache, resume=True)), latest
