"""The report's per-arm recipe table and its sweep figures: summary.json's ``sweeps`` from the shipped sweep
studies, the report.md table per sweep, plots/sweeps.png, and what each arm runs (oracle labels, joint
training's backbone, the causal rule)."""

from __future__ import annotations

from helpers import SPECS

from specroute.report.markdown import arms_section
from specroute.report.plots import write_plots
from specroute.report.summary import sweep_entries
from specroute.report.sweeps import sweeps_section
from specroute.spec import load_study


def _arm(label, avg, std, seeds=3, **extra):
    entry = {"label": label, "gate": "G1", "loss": {"util": 0.0, "rank": 0.0, "jepa": 0.0, "budget": 0.0},
             "enforcement": "topk_sequence", "full_fraction_budget": 0.5, "trainable": ["gate", "cheap_ffn"],
             "oracle": {"labeling": "off_policy", "counterfactual": "all_flip"}, "causal_rule": "calibrated",
             "mean": {"avg_lm": avg, "final_lm": avg - 0.001}, "std": {"avg_lm": std, "final_lm": std},
             "seeds": {str(s): {} for s in range(seeds)}}
    return {**entry, **extra}


def test_sweep_entries_name_every_swept_arm_with_its_values():
    resolved = load_study(SPECS / "a9_utilrank_sweep.yaml", "smoke")
    (entry,) = sweep_entries(resolved.study.sweeps)
    assert entry["grid"] == ["loss.util", "loss.rank"]
    assert len(entry["arms"]) == 9
    for arm, values in entry["arms"].items():
        spec = resolved.arm_spec(arm)
        assert (spec.loss.util, spec.loss.rank) == (values["loss.util"], values["loss.rank"])
    a10 = sweep_entries(load_study(SPECS / "a10_budget_sweep.yaml", "smoke").study.sweeps)
    assert [len(e["arms"]) for e in a10] == [3, 3, 3, 3]


def test_sweep_table_and_plot(tmp_path):
    sweeps = [{"name": "budget", "label": "G1", "grid": ["routing.budget.full_fraction"],
               "arms": {f"budget_full_fraction{b}": {"routing.budget.full_fraction": b} for b in (0.25, 0.5, 0.75)}}]
    arms = {f"budget_full_fraction{b}": _arm(f"G1 b={b}", 2.34 - 0.01 * i, 0.001)
            for i, b in enumerate((0.25, 0.5, 0.75)) if b != 0.75}  # one swept arm did not finish
    summary = {"arms": arms, "sweeps": sweeps}
    text = "\n".join(sweeps_section(summary))
    assert "### Sweep `budget` (G1)" in text and "2 of 3 arms finished" in text
    assert "| 0.5 | 2.3300 ± 0.0010 | 2.3290 ± 0.0010 | lowest avg_lm |" in text
    assert "| 0.25 | 2.3400 ± 0.0010 |" in text
    no_runs = {k: {**a, "seeds": {}} for k, a in arms.items()}  # no curves to draw: the sweep plot alone
    assert write_plots({"arms": no_runs, "sweeps": sweeps}, tmp_path) == {"sweeps": "plots/sweeps.png"}
    assert (tmp_path / "plots" / "sweeps.png").read_bytes()[:4] == b"\x89PNG"
    assert "sweeps" not in write_plots({"arms": no_runs, "sweeps": []}, tmp_path)
    assert not (tmp_path / "plots" / "sweeps.png").exists()
    assert sweeps_section({"arms": arms}) == []


def test_every_column_of_a_sweep_table_has_a_header():
    sweeps = [{"name": "budget", "label": "", "grid": ["routing.budget.full_fraction"],
               "arms": {f"b{b}": {"routing.budget.full_fraction": b} for b in (0.25, 0.5)}}]
    arms = {f"b{b}": _arm(f"G1 b={b}", 2.34 - 0.01 * i, 0.001) for i, b in enumerate((0.25, 0.5))}
    lines = sweeps_section({"arms": arms, "sweeps": sweeps})
    header = next(line for line in lines if line.startswith("| routing.budget.full_fraction"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert all(cells) and cells[-1] == "note", header
    rows = [line for line in lines if line.startswith("| 0.")]
    assert [len(row.strip("|").split("|")) for row in rows] == [len(cells)] * 2
    assert rows[1].endswith("| lowest avg_lm |")  # the column the header names


def test_what_each_arm_runs():
    arms = {"joint": _arm("G1 joint", 2.3, 0.0, trainable=["gate", "cheap_ffn", "backbone"]),
            "on": _arm("G1 on-policy", 2.3, 0.0, loss={"util": 1.0, "rank": 1.0, "jepa": 0.0, "budget": 0.0},
                       oracle={"labeling": "on_policy", "counterfactual": "per_token"}),
            "thr": _arm("G1 threshold", 2.3, 0.0, enforcement="threshold", causal_rule="native")}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in arms_section(arms) if line.startswith("| G1")}
    assert "gate + cheap FFN + backbone" in rows["G1 joint"] and "| – |" in rows["G1 joint"]
    assert "on_policy, per_token" in rows["G1 on-policy"] and "1 / 1 / 0 / 0" in rows["G1 on-policy"]
    assert "threshold, b = 0.5" in rows["G1 threshold"] and "native (score > 0)" in rows["G1 threshold"]
    assert "calibrated τ" in rows["G1 joint"]
    assert arms_section({"old": {k: v for k, v in arms["joint"].items() if k != "trainable"}}) == []
