"""How far the micro study's numbers and verdicts move on other CPUs: the spread the claim regression's
tolerances and pinned verdicts must cover.

The micro study is deterministic on one machine, but float reductions differ with the CPU's kernel set
(AVX-512, AVX2, plain) and the intra-op thread count, which follows the core count. Each *variant* reruns
the whole micro study from scratch (its own cache: the backbone is trained again) in a child process with
``ATEN_CPU_CAPABILITY`` set (PyTorch's switch for its CPU kernel set, read at start-up) and the core count
the study sees replaced, then judges its claims. A verdict is pinned only if every variant gives it;
a value's tolerance covers the largest deviation seen, with a safety factor.

Run through ``specroute verify --regression FILE --update-reference`` (minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple


class Variant(NamedTuple):
    """A stand-in for another CPU: ATEN_CPU_CAPABILITY (None: this machine's) and the core count."""

    capability: str | None
    cpus: int

    @property
    def name(self) -> str:
        return f"{self.capability or 'native'}/{self.cpus}cpu"


#: This machine first (its run is the reference), then kernel sets and core counts of other machines.
VARIANTS = (Variant(None, 2), Variant(None, 1), Variant(None, 4), Variant(None, 8), Variant("avx2", 2),
            Variant("avx2", 1), Variant("default", 2), Variant("default", 1))
#: Tolerance of a pinned value: this many times the largest deviation seen, at least the floor. The
#: variants are stand-ins: a real other CPU (an AVX-512 Xeon against the machine that made an earlier
#: reference) moved the micro study's LM means by up to 6.8e-3 nats, about three times these variants'
#: largest deviation; hence the factor and the floor.
SAFETY = 4.0
FLOOR = {"lm": 0.01, "mechanism": 0.05}


def run_variant(variant: Variant, spec: Path, out: Path) -> dict[str, Any]:
    """The micro study of ``spec`` under ``variant`` in a child process, judged; its summary.json is
    written to ``out/report``."""
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if variant.capability:
        env["ATEN_CPU_CAPABILITY"] = variant.capability
    cmd = [sys.executable, "-m", "specroute.verify.spread", str(spec), str(out), str(variant.cpus)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant.name} failed:\n{done.stderr[-4000:]}")
    return json.loads((out / "verdicts.json").read_text(encoding="utf-8"))


def measure(spec: Path, work: Path, variants: tuple[Variant, ...] = VARIANTS,
            on_variant: Callable[[Variant], None] | None = None) -> list[tuple[Variant, dict[str, Any]]]:
    """Every variant's judged micro study (see :func:`run_variant`), under ``work/<i>``."""
    out = []
    for i, v in enumerate(variants):
        if on_variant is not None:
            on_variant(v)
        out.append((v, run_variant(v, spec, work / str(i))))
    return out


def pin(results: list[tuple[Variant, dict[str, Any]]]) -> dict[str, Any]:
    """The reference's micro section from the variants' results (the first is this machine's): verdicts
    every variant agrees on, the others as fragile, and tolerances over the values."""
    base = results[0][1]
    verdicts = {cid: [r["verdicts"][cid] for _, r in results] for cid in base["verdicts"]}
    values = {}
    for key, v in base["values"].items():
        dev = max(abs(r["values"][key] - v) for _, r in results)
        values[key] = {"value": v, "atol": max(SAFETY * dev, FLOOR["lm"]), "spread": dev}
    mech = {}
    for key in ("spearman", "sign_flips"):
        seen = [(r.get("mechanism") or {}).get(key) for _, r in results]
        if None not in seen:
            dev = max(abs(x - seen[0]) for x in seen)
            mech[key] = {"value": seen[0], "atol": max(SAFETY * dev, FLOOR["mechanism"]), "spread": dev}
    return {**{k: base[k] for k in ("summary", "spec", "numbers", "paper_proxies")},
            "verdicts": {cid: seen[0] for cid, seen in verdicts.items() if len(set(seen)) == 1},
            "fragile": {cid: [[v.name, verdict] for (v, _), verdict in zip(results, seen)]
                        for cid, seen in verdicts.items() if len(set(seen)) > 1},
            "values": values, "mechanism": mech, "variants": [v.name for v, _ in results]}


def _child(spec: Path, out: Path, cpus: int) -> None:
    """In the child: the study sees ``cpus`` cores (its thread count and worker count follow them)."""
    os.cpu_count = lambda: cpus  # type: ignore[assignment]
    from specroute.spec import load_study
    from specroute.train import StudyOptions, run_study
    from specroute.verify.regression import micro_verdicts

    run_study(load_study(spec), StudyOptions(out=out / "report", cache=out / "cache", overwrite=True))
    result = micro_verdicts(out / "report" / "summary.json", spec)
    from specroute.store import atomic_write_json

    atomic_write_json(out / "verdicts.json", result)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
