"""Run history of a workdir from ML Metadata: every run, newest first, its outcome, and which run pushed each version.

Reads MLMD through summary.py (one reader of MLMD for the end-of-run summary and the history alike)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING, Dict, List, Optional

import psutil

from components import constants
from pipeline import lock
from pipeline.config import PipelineConfig

if TYPE_CHECKING:  # imported at run time only where needed: it imports TFX and TensorFlow
    from pipeline import summary as summary_lib

LAST_NODE = "Pusher"  # the pipeline's last node (its default id): a run without it stopped early
STATUSES = ("complete", "failed", "running", "interrupted")


class HistoryError(ValueError):
    """An unknown workdir or run id; the message is one line saying what is wrong and where."""


@dataclasses.dataclass
class RunRecord:
    """One run as the history shows it: the run's summary plus its status and the new model's accuracy."""
    summary: summary_lib.RunSummary
    status: str  # one of STATUSES
    accuracy: Optional[float] = None  # the new model's overall accuracy on the eval split

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    @property
    def started(self) -> str:
        """The run's start as UTC text."""
        from pipeline.summary import utc  # pylint: disable=g-import-not-at-top  (loaded already by runs())
        return utc(self.summary.started_ms)

    @property
    def pushed_version(self) -> Optional[str]:
        """The version this run pushed itself (not one an earlier run pushed with the same inputs)."""
        return None if self.summary.push_cached else self.summary.pushed_version


def runs(workdir: str, pipeline_name: str = constants.PIPELINE_NAME) -> List[RunRecord]:
    """Every run of the pipeline recorded in the workdir's ML Metadata, newest first."""
    metadata_path = _metadata_path(workdir)
    holder_started_ms = _lock_holder_started_ms(workdir)
    # Imported only now: it imports TFX and TensorFlow (~10 s), which a bad --workdir need not wait for.
    from pipeline import summary as summary_lib  # pylint: disable=g-import-not-at-top
    with summary_lib.open_store(metadata_path) as store:
        contexts = summary_lib.pipeline_runs(store, pipeline_name)
        summaries = [summary_lib.summarize_run(store, context) for context in contexts]
    return [record(summary, newest=index == 0, holder_started_ms=holder_started_ms)
            for index, summary in enumerate(summaries)]


def show(workdir: str, run_id: str, pipeline_name: str = constants.PIPELINE_NAME) -> RunRecord:
    """One run by its id; HistoryError naming the known ids if there is no such run."""
    records = runs(workdir, pipeline_name)
    for candidate in records:
        if candidate.run_id == run_id:
            return candidate
    known = ", ".join(r.run_id for r in records[:5]) or "none"
    raise HistoryError(f"no run {run_id!r} in --workdir {workdir} (newest runs: {known}; see `iris-tfx runs`)")


def pushed_by(records: List[RunRecord]) -> Dict[str, RunRecord]:
    """Each pushed version -> the run that pushed it."""
    return {r.pushed_version: r for r in records if r.pushed_version}


def fingerprint_digest(fingerprint: str) -> str:
    """A short stable digest of ExampleGen's fingerprint, for a table column: equal digests, same input file."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:8] if fingerprint else "-"


def format_table(records: List[RunRecord]) -> str:
    """The runs as a fixed-width table, newest first."""
    header = ("run id", "started", "status", "accuracy", "blessed", "pushed", "data", "fingerprint")
    rows = [header] + [(
        r.run_id, r.started, r.status, "-" if r.accuracy is None else f"{r.accuracy:.4f}",
        {None: "-", True: "yes", False: "no"}[r.summary.blessed],
        r.pushed_version or (f"(={r.summary.pushed_version})" if r.summary.pushed_version else "-"),
        r.summary.data_path or "-", fingerprint_digest(r.summary.fingerprint)) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def format_run(record: RunRecord, workdir: str) -> str:
    """A run's summary again, with its start, status, data and report path."""
    summary = record.summary
    report = PipelineConfig(workdir=workdir).report_path(record.run_id)
    data = summary.data_path or "-"
    if summary.fingerprint:
        data += f" (span {summary.span}, fingerprint {summary.fingerprint})"
    lines = [summary.format()] + [f"{node.node} failed: {node.message}" for node in summary.failed if node.message]
    lines += [f"Started: {record.started}", f"Status: {record.status}", f"Data: {data}",
             f"Report: {report}" + ("" if os.path.exists(report) else
                                    f" (not written; `iris-tfx report --workdir {workdir} --run {record.run_id}`)")]
    return "\n".join(lines)


def _metadata_path(workdir: str) -> str:
    """The workdir's MLMD file; HistoryError if there is none (opening it would create an empty one)."""
    if not os.path.isdir(workdir):
        raise HistoryError(f"--workdir {workdir}: no such directory")
    path = PipelineConfig(workdir=workdir).metadata_path
    if not os.path.isfile(path):
        raise HistoryError(f"--workdir {workdir}: no runs recorded (no {os.path.basename(path)}; "
                           f"`iris-tfx run --workdir {workdir}` makes one)")
    return path


def _lock_holder_started_ms(workdir: str) -> Optional[int]:
    """When the process holding the workdir's run lock started (ms), or None if no run holds it."""
    pid = lock.holder_pid(workdir)
    try:
        return int(psutil.Process(pid).create_time() * 1000) if pid else None
    except psutil.Error:
        return None


def record(summary: summary_lib.RunSummary, newest: bool = False,
           holder_started_ms: Optional[int] = None) -> RunRecord:
    """A summary with its status: a run holding the lock is running; one that stopped without finishing (no
    failure recorded, a node left running or the last node never started) was interrupted."""
    states = {node.status for node in summary.nodes}
    if "FAILED" in states:
        status = "failed"
    elif states <= {"COMPLETE", "CACHED"} and any(node.node == LAST_NODE for node in summary.nodes):
        status = "complete"
    elif newest and holder_started_ms is not None and holder_started_ms <= summary.started_ms:
        status = "running"  # the lock holder started before this run's records: it is this run
    else:
        status = "interrupted"
    from pipeline.summary import ACCURACY  # pylint: disable=g-import-not-at-top  (already imported by runs())
    overall = summary.metrics.get(f"{ACCURACY} [overall]")
    return RunRecord(summary, status, overall.new if overall else None)
