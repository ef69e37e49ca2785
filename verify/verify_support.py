"""Paths and settings shared by the verification suite (imported by its tests and conftest)."""

from __future__ import annotations

import os
from pathlib import Path

from specroute.verify.runner import default_specs

ROOT = Path(__file__).resolve().parent.parent
SPECS = default_specs(ROOT / "specs")
REFERENCE = ROOT / "reports" / "reference"
#: Hypothesis examples per property in this suite (every shipped spec runs every check);
#: ``specroute verify`` defaults to 8.
EXAMPLES = int(os.environ.get("SPECROUTE_VERIFY_EXAMPLES", "5"))
