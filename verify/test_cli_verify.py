"""`specroute verify` and `specroute flops` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from specroute.cli import app
from verify_support import ROOT

runner = CliRunner()
A3 = str(ROOT / "specs" / "a3.yaml")


def test_verify_prints_the_table_and_exits_0():
    r = runner.invoke(app, ["verify", A3, "--only", "budget.topk_exact", "--only", "params.paper",
                            "--examples", "2"])
    assert r.exit_code == 0, r.output
    assert "budget.topk_exact" in r.output and "a3.yaml" in r.output and "pass" in r.output
    assert "157.52M" in r.output
    assert "budget.topk_exact a3.yaml" in r.stderr and ": pass" in r.stderr  # progress, without a terminal too


def test_verify_json_and_failure_exit_code(monkeypatch):
    import specroute.model.routing as routing

    ok = runner.invoke(app, ["verify", A3, "--only", "budget.topk_exact", "--examples", "2", "--json"])
    assert ok.exit_code == 0
    payload = json.loads(ok.output)
    assert payload["failed"] == 0 and payload["results"][0]["check"] == "budget.topk_exact"
    real = routing.ceil_budget
    monkeypatch.setattr(routing, "ceil_budget", lambda b, n: max(0, real(b, n) - 1))
    bad = runner.invoke(app, ["verify", A3, "--only", "budget.topk_exact", "--examples", "6"])
    assert bad.exit_code == 1
    assert "FAIL" in bad.output


def test_verify_user_errors_exit_2(tmp_path):
    assert runner.invoke(app, ["verify", A3, "--only", "no.such.check"]).exit_code == 2
    assert runner.invoke(app, ["verify", str(tmp_path / "missing.yaml")]).exit_code == 2
    assert runner.invoke(app, ["verify", str(tmp_path)]).exit_code == 2  # a folder needs --claims


def test_verify_regression_refuses_a_report_it_would_not_judge(tmp_path):
    r = runner.invoke(app, ["verify", "--claims", str(tmp_path), "--regression", str(tmp_path / "ref.json")])
    assert r.exit_code == 2 and "it judges no report" in r.output and "--claims alone" in r.output


def test_verify_claims_refuses_what_is_not_a_report(tmp_path):
    missing = runner.invoke(app, ["verify", "--claims", str(tmp_path / "no_such_report")])
    assert missing.exit_code == 2 and "not found" in missing.output and "invalid spec" not in missing.output
    (tmp_path / "folder").mkdir()
    folder = runner.invoke(app, ["verify", "--claims", str(tmp_path / "folder")])
    assert folder.exit_code == 2 and "holds no summary.json, so it is not a study report" in folder.output
    for i, text in enumerate(['[1, 2]', '{"a": 1}', '{"study": "x", "arms": 5}', 'not json']):
        path = tmp_path / f"s{i}.json"
        path.write_text(text)
        r = runner.invoke(app, ["verify", "--claims", str(path)])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (text, r.output)
        assert "not a study report" in r.output, text
    (tmp_path / "bytes.json").write_bytes(bytes(range(128, 256)))
    r = runner.invoke(app, ["verify", "--claims", str(tmp_path / "bytes.json")])
    assert r.exit_code == 2 and "not a study report's summary.json (not UTF-8 text)" in r.output


def test_verify_claims_against_the_committed_micro_report():
    micro = ROOT / "reports" / "reference" / "micro"
    r = runner.invoke(app, ["verify", "--claims", str(micro), "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.output)
    v = {x["id"]: x for x in payload["verdicts"]}
    assert list(v) == [f"C{i}" for i in range(1, 13)]
    for x in v.values():
        assert x["criterion"] and x["reason"] and "n" in x and "interval" in x
    # C5 is judged on the effective rank alone, per seed, from the summary's own numbers
    summary = json.loads((micro / "summary.json").read_text())
    roles = summary["roles"]
    ranks = [[summary["arms"][roles[r]]["seeds"][s]["latent"]["effective_rank"] for s in ("0", "1", "2")]
             for r in ("g3_unaligned", "g3_utilrank")]
    ratios = [a / b for a, b in zip(*ranks)]
    assert v["C5"]["values"]["rank_ratios"] == pytest.approx(ratios)
    if min(ratios) > 0.5:
        assert v["C5"]["verdict"] != "reproduced"
    c11 = v["C11"]
    assert c11["values"]["utilrank"] > c11["values"]["lm"] > 0.5 and "gather/controller_only" in c11["reason"]
    text = runner.invoke(app, ["verify", "--claims", str(micro)])
    assert text.exit_code == 0 and "criterion" in text.output and "effect [95% interval]" in text.output


def test_flops_paper_profile_prints_both_proxies_and_the_breakdown():
    r = runner.invoke(app, ["flops", A3, "--profile", "paper"])
    assert r.exit_code == 0, r.output
    for text in ("157.52M", "routed forward", "oracle", "backward", "1.53x", "1.07x", "controller_only",
                 "paper comparison", "with util/rank", "without util/rank"):
        assert text in r.output, text


def test_flops_json():
    r = runner.invoke(app, ["flops", A3, "--profile", "paper", "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.output)
    g1u = payload["arms"]["G1_utilrank"]
    assert g1u["params"]["routed_model"] == 157_519_104
    assert set(g1u["proxy"]) == {"masked", "gather"}
    assert set(g1u["proxy"]["masked"]) == {"forward_only", "controller_only", "full_training"}
    assert g1u["flops"]["masked"]["oracle"] > 0 and payload["arms"]["G1_lm"]["flops"]["masked"]["oracle"] == 0
    assert payload["paper"]["ours"]["utilrank"] > payload["paper"]["ours"]["lm"]


def test_flops_counts_the_oracle_under_both_counterfactuals(tmp_path):
    """`specroute flops` prices per-token labels beside all-flip ones: 1 + S copies of the batch per labelled
    layer vs 2, and the arm's own oracle column follows the counterfactual it uses."""
    spec = tmp_path / "per_token.yaml"
    spec.write_text(f"extends: {A3}\nloss: {{oracle: {{counterfactual: per_token, tokens_per_sequence: 4}}}}\n")
    payloads = {}
    for name, path in (("all_flip", A3), ("per_token", str(spec))):
        r = runner.invoke(app, ["flops", path, "--profile", "smoke", "--json"])
        assert r.exit_code == 0, r.output
        payloads[name] = json.loads(r.output)
    cf = payloads["per_token"]["arms"]["G1_utilrank"]["oracle_counterfactual"]
    assert cf["used"] == "per_token" and cf["copies"] == {"all_flip": 2, "per_token": 5}
    assert cf["flops"]["per_token"] > 2 * cf["flops"]["all_flip"]
    for name, payload in payloads.items():
        arm = payload["arms"]["G1_utilrank"]
        assert arm["flops"]["masked"]["oracle"] == pytest.approx(arm["oracle_counterfactual"]["flops"][name])
        assert "oracle_counterfactual" not in payload["arms"]["G1_lm"]
    text = runner.invoke(app, ["flops", str(spec), "--profile", "smoke"]).output
    assert "oracle counterfactual (G1_utilrank uses per_token)" in text
