"""Fixtures of the verification suite: the verifiers' results on every shipped spec, computed once."""

from __future__ import annotations

import pytest

from specroute.verify import Context, run_verification
from verify_support import EXAMPLES, SPECS


@pytest.fixture(scope="session")
def shipped_reports():
    """Every verifier on every arm of every shipped spec (default profile)."""
    return run_verification(SPECS, ctx=Context(examples=EXAMPLES))
