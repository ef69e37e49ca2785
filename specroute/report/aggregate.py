"""A study folder's report from whatever runs have finished there (``specroute report OUT``).

Every process that writes a study folder writes its report when its runs end, and ``specroute report OUT``
rebuilds it at any time (after shards or a SLURM array, or while they run): both read every run of the
study from ``runs/<arm>/seed<k>/result.json`` (finished or failed), list the runs with no result yet as
missing (``summary.json``'s ``missing``, report.md's "Missing runs"), leave out a run whose files are
damaged (a result.json that is not a JSON object, a finished run's metrics.jsonl with a line that is not one)
and list it with the file and what is wrong (``unreadable``, the same section), and hold the folder's lock while
writing (:func:`specroute.locks.hold_lock`, waiting for another writer's few seconds).

What the report needs besides the runs is kept in the folder: ``study.json`` (the resolved study: each
arm's run spec, labels, seeds, comparisons, roles; :func:`study_record`) and ``inputs.json`` (the data,
backbone and environment of the process that wrote the last report:
:func:`specroute.report.summary.inputs_record`), so the report needs neither the spec file nor the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from specroute.store import UserError, atomic_write_json

#: The file of a study folder that holds its data, backbone and environment records.
INPUTS = "inputs.json"


def study_record(resolved: Any, sha: str) -> dict[str, Any]:
    """``study.json``'s content for a :class:`specroute.spec.Resolved` study of spec hash ``sha``."""
    from specroute.spec.loader import dump_run

    study = resolved.study
    return {
        "study": study.name, "profile": study.profile, "spec_sha256": sha, "source": str(resolved.source),
        "arms": {a: dump_run(resolved.arm_spec(a)) for a in study.arms}, "seeds": study.seeds,
        "description": study.description, "labels": {a: study.arms[a].label for a in study.arms},
        "comparisons": [c.model_dump(mode="json") for c in study.comparisons],
        "roles": study.roles.model_dump(mode="json"), "equivalence_margin_nats": study.equivalence_margin_nats,
        "sweeps": [sw.model_dump(mode="json") for sw in study.sweeps],
    }


class RecordedStudy:
    """What :func:`specroute.report.summary.build_summary` reads of a study, from its ``study.json``
    (:func:`study_record`): ``study`` (name, profile, description, seeds, arms with labels, comparisons,
    roles, equivalence margin, sweeps) and :meth:`arm_spec`."""

    def __init__(self, record: dict[str, Any]):
        from specroute.spec.models import RunSpec
        from specroute.spec.roles import RolesSpec
        from specroute.spec.study import ArmSpec, ComparisonSpec
        from specroute.spec.sweeps import SweepSpec

        self.sha = record["spec_sha256"]
        self._specs = {a: RunSpec.model_validate(spec) for a, spec in record["arms"].items()}
        labels = record.get("labels") or {}
        self.study = SimpleNamespace(
            name=record["study"], profile=record["profile"], description=record.get("description", ""),
            seeds=list(record["seeds"]), arms={a: ArmSpec(label=labels.get(a, "")) for a in record["arms"]},
            comparisons=[ComparisonSpec.model_validate(c) for c in record.get("comparisons", [])],
            roles=RolesSpec.model_validate(record.get("roles") or {}),
            equivalence_margin_nats=record.get("equivalence_margin_nats"),
            sweeps=[SweepSpec.model_validate(sw) for sw in record.get("sweeps", [])])

    def arm_spec(self, arm: str) -> Any:
        return self._specs[arm]


def read_study(out: Path) -> RecordedStudy:
    """The study recorded in ``out``. Raises UserError when ``out`` is not a study folder (no readable
    ``study.json``) or its ``study.json`` predates these records (run the study's command again)."""
    meta = out / "study.json"
    if not meta.is_file():
        raise UserError(f"{out} is not a study folder (no study.json); give the --out of a `specroute run`")
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
        return RecordedStudy(record)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {meta} ({e}); give the --out of a `specroute run`") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{meta} does not record the study as this version of specroute does ({e!r}); "
                        "run the study's `specroute run ... --resume` to write its report") from None


class CollectedRuns(NamedTuple):
    """The runs of a study folder (:func:`collect_runs`): ``results`` {arm: {seed: result}} (finished and
    failed runs, arms in spec order), ``missing`` {arm: [seed]} (no result yet) and ``unreadable`` {arm:
    {seed: reason}} (a damaged result.json, or a finished run's damaged metrics.jsonl: the file and what is
    wrong); the last two hold only arms with some."""

    results: dict[str, dict[int, dict[str, Any]]]
    missing: dict[str, list[int]]
    unreadable: dict[str, dict[int, str]]


def collect_runs(out: Path, study: Any) -> CollectedRuns:
    """Every run of ``study`` (its ``arms`` and ``seeds``) in ``out``, by what its folder holds: a readable
    result (:func:`specroute.train.runs.read_result`; for a finished run, a readable ``metrics.jsonl`` too,
    which the plots read: :func:`specroute.train.trainer.read_metrics`), none yet, or a damaged one."""
    from specroute.train.runs import is_failed, read_result, run_dir
    from specroute.train.trainer import read_metrics

    runs = CollectedRuns({}, {}, {})
    for arm in study.arms:
        for seed in study.seeds:
            folder = run_dir(out, arm, seed)
            if not (folder / "result.json").is_file():
                runs.missing.setdefault(arm, []).append(seed)
                continue
            try:
                result = read_result(folder / "result.json")
                if not is_failed(result):
                    read_metrics(folder / "metrics.jsonl")
            except UserError as e:
                runs.unreadable.setdefault(arm, {})[seed] = str(e)
                continue
            runs.results.setdefault(arm, {})[seed] = result
    return runs


def write_study_report(out: Path, resolved: Any, sha: str, inputs: dict[str, Any] | None,
                       sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``out``'s report (summary.json, plots, report.md) from every run there; return the summary.
    ``inputs``: this process's :func:`specroute.report.summary.inputs_record` (its data, backbone and
    environment: what its report shows), kept in ``inputs.json`` for :func:`rebuild_report`; None: use
    ``inputs.json`` (the last report's). The caller holds the folder's lock.

    Raises UserError when no run has a readable result (none finished, or every result there is damaged:
    :func:`collect_runs`), or ``inputs`` is None and ``inputs.json`` is unreadable."""
    from specroute.report import write_report
    from specroute.report.summary import build_summary

    results, missing, unreadable = collect_runs(out, resolved.study)
    if not results:
        damaged = [reason for seeds in unreadable.values() for reason in seeds.values()]
        raise UserError(f"no run of the study in {out} has a readable result ("
                        + "; ".join([*(f"missing: {a} seeds {s}" for a, s in missing.items()),
                                     *(f"unreadable: {r}" for r in damaged)])
                        + "); nothing to report")
    path = out / INPUTS
    if inputs is not None:
        atomic_write_json(path, inputs)
        recorded = inputs
    else:
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{out} holds no readable {INPUTS} (no process of this study has written its report "
                            "yet): nothing to report") from None
    summary = build_summary(resolved, sha, results, recorded, sum(s["wall_s"] for s in sessions), sessions,
                            missing, unreadable)
    write_report(out, summary, resolved)
    return summary


def rebuild_report(out: Path) -> dict[str, Any]:
    """``specroute report OUT``: rewrite ``out``'s report from the runs finished there (holding the folder's
    lock); returns the summary. Raises UserError for a folder that is not a study or has nothing to report."""
    from specroute.locks import hold_lock
    from specroute.report.sessions import read_sessions
    from specroute.train.sharing import STUDY_LOCK_WAIT_S

    if not out.is_dir():
        raise UserError(f"{out} is not a folder; give the --out of a `specroute run`")
    study = read_study(out)
    with hold_lock(out, "the output folder", STUDY_LOCK_WAIT_S):
        return write_study_report(out, study, study.sha, None, read_sessions(out))
