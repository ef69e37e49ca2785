"""End to end through the CLI on a micro profile of the A3 study: the report's files, the summary's keys
and the sanity of its values; parallel worker runs equal in-process runs."""

from __future__ import annotations

import itertools
import json
import re
import math

import pytest
import torch
from typer.testing import CliRunner

from helpers import MICRO, SPECS, micro, strip_wall
from specroute.cli import app
from specroute.train import StudyOptions, run_study

ARMS = ["G1_utilrank", "G3_utilrank", "G1_lm", "G3_lm"]
SEED_KEYS = {"lm", "best_lm", "avg_lm", "final_lm", "threshold_hits", "grad_norm", "full_fraction", "flops_proxy",
             "wall_s", "latent", "lm_by_batch", "score_quantiles"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    args = ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", *[x for s in MICRO for x in ("--set", s)],
            "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp / "out", result.output


def test_report_files(study):
    out, output = study
    assert "estimated time" in output and "report.md" in output
    for name in ("report.md", "summary.json", "study.json"):
        assert (out / name).stat().st_size > 100
    for png in ("lm_curves", "grad_norm", "score_distribution"):
        data = (out / "plots" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not (out / "plots" / "full_fraction.png").exists()  # top-k: the full fraction is the budget
    for arm in ARMS:
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed{seed}"
            lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            assert [l["step"] for l in lines if l["event"] == "train"] == list(range(1, 13))
            assert lines[-1]["event"] == "end"
            assert (run / "controller.safetensors").is_file() and (run / "ckpt" / "latest").is_file()
    assert not list(out.rglob("*.tmp"))


def test_summary_contract_and_values(study):
    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    assert {"study", "profile", "spec_sha256", "environment", "data", "backbone", "arms", "comparisons",
            "wall_s"} <= set(s)
    assert s["study"] == "a3" and s["profile"] == "smoke" and len(s["spec_sha256"]) == 64
    env = s["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["torch"] == torch.__version__
    assert env["git_commit"]
    data = s["data"]
    assert {"kind", "corpus_sha256", "tokenizer", "tokenizer_sha256", "train_tokens", "heldout_tokens",
            "unigram_entropy_nats"} <= set(data)
    assert data["kind"] == "embedded" and data["tokenizer"] == "bytes"
    bb = s["backbone"]
    assert {"heldout_lm", "steps", "cache_key", "wall_s"} <= set(bb) and bb["steps"] == 30
    assert bb["heldout_lm"] < bb["initial_lm"] and bb["heldout_lm"] < math.log(256)
    assert list(s["arms"]) == ARMS
    for name, arm in s["arms"].items():
        assert {"label", "gate", "loss", "seeds", "mean", "std"} <= set(arm)
        assert set(arm["loss"]) == {"util", "rank", "jepa", "budget"}
        assert arm["gate"] == name[:2] and set(arm["seeds"]) == {"0", "1"}
        for seed in arm["seeds"].values():
            assert SEED_KEYS <= set(seed)
            values = [v for _, v in seed["lm"]]
            assert [st for st, _ in seed["lm"]] == [4, 8, 12]
            assert all(math.isfinite(v) and 0 < v < math.log(256) for v in values)
            assert seed["best_lm"] == min(values) <= seed["avg_lm"] <= max(values)
            assert seed["best_lm"] <= seed["final_lm"] == values[-1]
            for metric, per_batch in seed["lm_by_batch"].items():  # the noise of the per-seed comparisons
                assert len(per_batch) == 2 and math.isclose(sum(per_batch) / 2, seed[metric], rel_tol=1e-9)
            assert set(seed["threshold_hits"]) == {"4.5", "3.5"}
            for tau, hit in seed["threshold_hits"].items():
                assert hit is None or (hit in (4, 8, 12) and dict(seed["lm"])[hit] <= float(tau))
            assert seed["full_fraction"]["train"] == {"1": 0.5} and seed["full_fraction"]["eval"] == {"1": 0.5}
            assert 0 < seed["grad_norm"]["median"] and 0 < seed["grad_norm"]["mean"]
            assert seed["flops_proxy"] > 0 and seed["wall_s"] > 0
            quantiles = seed["score_quantiles"]["1"]
            assert len(quantiles) == 5 and quantiles == sorted(quantiles) and quantiles[0] < quantiles[-1]
            if arm["gate"] == "G3":
                assert seed["latent"]["variance"] >= 0 and 1 <= seed["latent"]["effective_rank"] <= 4
            else:
                assert seed["latent"] is None
        assert math.isclose(arm["mean"]["best_lm"], sum(v["best_lm"] for v in arm["seeds"].values()) / 2)
    on, off = s["arms"]["G1_utilrank"]["mean"]["flops_proxy"], s["arms"]["G1_lm"]["mean"]["flops_proxy"]
    assert on > off  # the oracle's continuations cost FLOPs
    comps = s["comparisons"]
    assert len(comps) == 4 * 3 and {c["metric"] for c in comps} == {"avg_lm", "best_lm", "threshold_hits"}
    for c in comps:
        assert {"id", "better", "worse", "claim", "metric", "n", "wins", "ties", "losses", "mean_diff", "interval",
                "p_sign", "per_seed"} == set(c)
        assert c["n"] == 2 and c["wins"] + c["ties"] + c["losses"] == 2 and 0 < c["p_sign"] <= 1
        lo, hi = c["interval"]
        assert lo <= c["mean_diff"] <= hi
    assert s["roles"] == {"g1_utilrank": "G1_utilrank", "g3_utilrank": "G3_utilrank", "g1_lm": "G1_lm",
                          "g3_lm": "G3_lm"}


def test_report_markdown(study):
    out, _ = study
    md = (out / "report.md").read_text()
    s = json.loads((out / "summary.json").read_text())
    for needle in ("## Environment", "## Data", "## Backbone", "## Results per arm", "### Threshold hits",
                   "## Per-seed comparisons", "## The paper's figures beside ours", "## Claims", "## Plots",
                   s["data"]["corpus_sha256"], s["spec_sha256"], "G1, util/rank", "10.30×", "1.53×",
                   "unigram entropy", "plots/lm_curves.png"):
        assert needle in md, needle
    for c in s["comparisons"]:
        assert (f"| {c['id']} | {c['better']} | {c['worse']} | {c['metric']} | "
                f"{c['wins']} / {c['ties']} / {c['losses']} of {c['n']} |") in md
    claims = md.split("## Claims")[1].split("## Plots")[0]
    rows = [line for line in claims.splitlines() if line.startswith("| C")]
    assert [r.split(" | ")[0] for r in rows] == [f"| C{i}" for i in range(1, 13)]
    for row in rows:  # seven cells each: a "|" inside a cell is escaped
        assert len(re.findall(r"(?<!\\)\|", row)) == 8, row
    assert "n=2 < 3 seeds" in next(r for r in rows if r.startswith("| C1 "))  # two seeds: not checkable
    c12 = next(r for r in rows if r.startswith("| C12"))
    assert "never from CPU wall times" in c12 and "not checkable" in c12  # the criterion is shown
    figures = md.split("## The paper's figures beside ours")[1].split("## Claims")[0]
    for row in (line for line in figures.splitlines() if line.startswith("| C")):
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row


def test_resume_of_finished_study_rewrites_same_report(study, tmp_path):
    out, _ = study
    before = json.loads((out / "summary.json").read_text())
    args = ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", *[x for s in MICRO for x in ("--set", s)],
            "--out", str(out), "--cache-dir", str(out.parent / "cache"), "--resume"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    after = json.loads((out / "summary.json").read_text())
    assert after["arms"] == before["arms"] and after["backbone"]["source"] == "cache"


def test_parallel_workers_equal_in_process(study, tmp_path):
    out, _ = study
    seq = json.loads((out / "summary.json").read_text())
    par = run_study(micro(), StudyOptions(out=tmp_path / "par", arms=["G3_utilrank"], device="cpu",
                                          cache=out.parent / "cache", workers=2)).summary
    for seed in ("0", "1"):
        assert strip_wall(seq["arms"]["G3_utilrank"]["seeds"][seed]) == strip_wall(par["arms"]["G3_utilrank"]["seeds"][seed])


def _tables(md: str) -> list[list[str]]:
    """The markdown tables of a report: runs of consecutive lines that start with "|"."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_no_cell_can_break_a_table(study):
    """Arm labels are the user's text: pipes and line breaks in them stay inside their cells, in every table."""
    from specroute.report.markdown import render

    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    for arm in s["arms"].values():
        arm["label"] = f"{arm['label']} |a|b|\nnext line"
    s["environment"]["device_name"] = "cpu | x"
    md = render(s, {})
    tables = _tables(md)
    assert len(tables) >= 6
    for table in tables:
        assert all(_cells(line) == _cells(table[0]) for line in table), table
    c4 = next(line for line in md.splitlines() if line.startswith("| C4 | final_lm G3 - G1"))
    assert _cells(c4) == 5


def test_md_table_escapes_and_checks_row_width():
    from specroute.text import md_table

    assert md_table(["a", "b"], [["x|y", "1\n2"], ["only"]]) == ["| a | b |", "|---|---|", "| x\\|y | 1 2 |",
                                                                 "| only |  |"]
    assert md_table(["a"], [["already \\| escaped"]])[2] == "| already \\| escaped |"
    with pytest.raises(ValueError, match="3 cells, header 2"):
        md_table(["a", "b"], [[1, 2, 3]])


def test_plural():
    from specroute.text import plural

    assert [plural(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert plural(1, "analysis", "analyses") == "1 analysis" and plural(2, "analysis", "analyses") == "2 analyses"


def test_report_counts_in_the_right_number(study):
    from specroute.report.markdown import render

    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    assert "- 4 arms × 2 seeds; controller steps per run" in render(s, {})
    s["arms"] = {"G1_lm": s["arms"]["G1_lm"]}
    s["arms"]["G1_lm"]["seeds"] = {"0": s["arms"]["G1_lm"]["seeds"]["0"]}
    s["comparisons"] = []
    md = render(s, {})
    assert "- 1 arm × 1 seed; controller steps per run" in md and "1 seed per arm" in md
    assert "1/1 seed:" in md and "1 runs" not in md and "1 seeds" not in md


def test_one_colour_per_arm_across_plots(study, monkeypatch):
    from specroute.report import plots

    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.__setitem__(path.name, fig))
    plots.plot_lm(s, out / "lm.png")
    plots.plot_grad_norm(s, out / "runs", out / "grad.png")
    plots.plot_scores(s, out / "scores.png")
    colours = plots.arm_colours(s)
    assert list(colours) == ARMS and len(set(colours.values())) == 4
    labels = {a["label"]: arm for arm, a in s["arms"].items()}
    for name in ("lm.png", "grad.png"):
        lines = [l for l in figures[name].axes[0].get_lines() if l.get_label().endswith("(n=2)")]
        assert len(lines) == 4
        for line in lines:
            arm = labels[line.get_label().rsplit(" (n=", 1)[0]]
            assert tuple(line.get_color()) == tuple(colours[arm]), (name, arm)
    boxes = {c.get_label(): c.patches[0] for c in figures["scores.png"].axes[0].containers
             if not c.get_label().startswith("_")}
    assert {labels[k]: tuple(v.get_facecolor()[:3]) for k, v in boxes.items()} == \
        {arm: tuple(c[:3]) for arm, c in colours.items()}


def test_full_fraction_plot_only_under_threshold_routing(study, tmp_path):
    from specroute.report.plots import write_plots

    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "full_fraction.png").write_bytes(b"an earlier report's plot")
    assert set(write_plots(s, tmp_path)) == {"lm_curves", "grad_norm", "score_distribution", "gate_scale",
                                             "causal_lm"}
    assert not (tmp_path / "plots" / "full_fraction.png").exists()
    s["arms"]["G1_lm"]["enforcement"] = "threshold"
    assert set(write_plots(s, tmp_path)) == {"lm_curves", "grad_norm", "score_distribution", "full_fraction",
                                             "gate_scale", "causal_lm"}
    assert (tmp_path / "plots" / "full_fraction.png").read_bytes()[:4] == b"\x89PNG"


def _c12(summary, bench=None):
    from specroute.claims import evaluate_claims

    return next(v for v in evaluate_claims(summary, bench=bench) if v.id == "C12")


def _with_wall(summary, device, concurrent, lm_s=60.0, utilrank_s=100.0):
    s = json.loads(json.dumps(summary))
    s["environment"]["device"] = device
    for name, arm in s["arms"].items():
        arm["mean"]["wall_s"] = lm_s if name.endswith("_lm") else utilrank_s
        for seed in arm["seeds"].values():
            seed["concurrent_runs"] = concurrent
    return s


def _bench(ratio, **extra):
    return {"study": "a3", "profile": "bench", "environment": {"device": "cpu"}, "quick": False, "warnings": [],
            "recipes": [{"gate": g, "measured_ratio": ratio} for g in ("G1", "G3")], **extra}


def test_c12_is_judged_only_from_timings_that_can_carry_it(study):
    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    for concurrent in (1, 2):  # CPU wall times of runs: never judged, one at a time or not
        v = _c12(_with_wall(s, "cpu", concurrent))
        assert v.verdict == "not checkable" and "CPU wall times" in v.reason and "specroute bench" in v.reason
    assert _c12(_with_wall(s, "cuda", 1)).verdict == "reproduced"  # 40% less
    assert _c12(_with_wall(s, "cuda", 1, lm_s=95.0)).verdict == "not reproduced"
    assert _c12(_with_wall(s, "cuda", 2)).verdict == "not checkable"
    cpu = _with_wall(s, "cpu", 2)
    v = _c12(cpu, _bench(0.6))
    assert v.verdict == "reproduced" and v.values["source"] == "bench" and "controller-step time" in v.numbers
    assert _c12(cpu, _bench(0.9)).verdict == "not reproduced"
    assert _c12(cpu, _bench(0.6, quick=True)).verdict == "not checkable"
    busy = _c12(cpu, _bench(0.6, warnings=["the machine was busy: other processes took 30% ..."]))
    assert busy.verdict == "inconclusive" and "busy" in busy.reason


def test_c12_verdict_is_stable_between_equal_cpu_studies(study):
    """Two CPU studies whose losses are identical get the same C12 verdict whatever their wall times."""
    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    verdicts = {_c12(_with_wall(s, "cpu", 1, lm_s=lm)).label for lm in (55.0, 61.0, 75.0)}
    assert len(verdicts) == 1


def test_bench_timing_finds_the_studys_newest_bench(tmp_path):
    from specroute.claims import bench_timing

    assert bench_timing({"study": "a3"}, tmp_path) is None
    for name, body in (("a3_bench", _bench(0.6)), ("a3_quick", "not json"),
                       ("a4_bench", {**_bench(0.5), "study": "a4"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(body if isinstance(body, str) else json.dumps(body))
    found = bench_timing({"study": "a3"}, tmp_path)
    assert found["recipes"][0]["measured_ratio"] == 0.6 and found["path"].endswith("a3_bench/summary.json")
    assert bench_timing({"arms": {}}, tmp_path) is None


def test_total_wall_time_sums_the_interrupted_and_resumed_sessions(tmp_path):
    from specroute.train import Interrupted

    options = dict(out=tmp_path / "out", arms=["G1_lm"], seeds=[0], device="cpu", cache=tmp_path / "cache",
                   workers=1)
    with pytest.raises(Interrupted):
        run_study(micro(), StudyOptions(**options, max_steps_this_session=36))  # the backbone and a few steps
    first = json.loads((tmp_path / "out" / "sessions.json").read_text())
    assert [x["ended"] for x in first] == ["interrupted"] and first[0]["wall_s"] > 0
    summary = run_study(micro(), StudyOptions(**options, resume=True)).summary
    sessions = summary["sessions"]
    assert [x["ended"] for x in sessions] == ["interrupted", "complete"]
    assert sessions[0] == first[0]
    assert summary["wall_s"] == pytest.approx(sum(x["wall_s"] for x in sessions))
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"total wall time {summary['wall_s']:.0f} s (2 sessions)" in md


def test_validate_names_parameter_groups_as_train_trainable():
    r = CliRunner().invoke(app, ["validate", str(SPECS / "a3.yaml"), "--profile", "paper"])
    assert r.exit_code == 0, r.output
    assert "gate params" in r.output and "trained params" in r.output and "controller params" not in r.output
    assert "gate params (the controller) counted apart" in r.output


def _drawn(study, monkeypatch) -> dict:
    """The score, gate-scale and causal figures of the micro study, drawn (their layout done), by file name."""
    from specroute.report import plots

    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.__setitem__(path.name, fig))
    plots.plot_scores(s, out / "scores.png")
    plots.plot_gate_scale(s, out / "gate.png")
    plots.plot_causal(s, out / "causal.png")
    for fig in figures.values():
        fig.canvas.draw()
    return s, figures


def test_plot_legends_name_every_arm_below_the_panels_never_over_them(study, monkeypatch):
    s, figures = _drawn(study, monkeypatch)
    labels = [a["label"] for a in s["arms"].values()]
    for name, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes), name
        legend = fig.legends[0]
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts[:len(labels)] == labels, (name, texts)
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            panel = ax.get_tightbbox(renderer)  # the panel with its tick labels and axis labels
            assert not box.overlaps(panel), (name, box, panel)
            assert box.y1 <= panel.y0, (name, box, panel)  # below
    gate = figures["gate.png"]
    renderer = gate.canvas.get_renderer()
    for ax, words in zip(gate.axes, ("gate score", "latent")):
        label = ax.yaxis.label
        assert words in label.get_text() and "log scale" in label.get_text(), label.get_text()
        assert label.get_window_extent(renderer).height <= ax.get_window_extent(renderer).height  # not cut
    marks = [t.get_text() for t in gate.legends[0].get_texts()][len(labels):]
    assert marks == ["after training (left), predictor P (right)", "before training (left), target T (right)"]


def test_causal_plot_names_each_arm_once_on_its_x_axis_without_overlap(study, monkeypatch):
    s, figures = _drawn(study, monkeypatch)
    fig = figures["causal.png"]
    renderer = fig.canvas.get_renderer()
    ticks = fig.axes[0].get_xticklabels()
    assert [t.get_text().replace("\n", " ") for t in ticks] == [a["label"] for a in s["arms"].values()]
    assert all(t.get_rotation() == 40 for t in ticks)  # 4 arms: slanted
    boxes = [t.get_window_extent(renderer) for t in ticks]
    assert all(not a.overlaps(b) for a, b in itertools.pairwise(boxes)), boxes
    for box in boxes:  # the layout keeps every arm's name on the canvas
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0, (box, fig.bbox)


def test_a_report_without_comparisons_says_so_instead_of_an_empty_table(study):
    from specroute.report.markdown import render

    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    section = render(s, {}).split("## Per-seed comparisons")[1].split("\n## ")[0]
    assert len(_tables(section)) == 1 and len(_tables(section)[0]) == 2 + len(s["comparisons"])
    assert "No comparison to show" not in section
    section = render({**s, "comparisons": []}, {}).split("## Per-seed comparisons")[1].split("\n## ")[0]
    assert _tables(section) == []
    assert "No comparison to show: the spec declares none (`comparisons:`), or none has both its arms " \
           "finished." in section
