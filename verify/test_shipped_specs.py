"""`specroute verify` passes on every shipped spec: one test per (check, spec)."""

from __future__ import annotations

import pytest

from specroute.verify.runner import VERIFIERS

from verify_support import SPECS


@pytest.mark.parametrize("check", [v.id for v in VERIFIERS])
@pytest.mark.parametrize("spec", [p.name for p in SPECS])
def test_check_passes_or_skips_with_a_reason(shipped_reports, check, spec):
    (report,) = [r for r in shipped_reports if r.check == check and r.spec == spec]
    assert report.status in ("pass", "skip"), f"{check} on {spec}: {report.measured} ({report.detail})"
    if report.status == "skip":
        assert report.detail, "a skip says why"
    for arm in report.arms:
        assert arm.check == check


def test_every_check_runs_somewhere(shipped_reports):
    """No verifier is skipped on every shipped spec, except the threshold budget (no shipped spec uses
    threshold routing; its verifier runs in test_bites on a threshold spec)."""
    ran = {r.check for r in shipped_reports if r.status == "pass"}
    assert set(v.id for v in VERIFIERS) - ran == {"budget.threshold"}
