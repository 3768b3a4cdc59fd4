"""What ``inginious-tx`` prints: results, summaries, queues, as text."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence

from ..client import ClientJobResult, QueueSnapshot

__all__ = [
    "RESULT_ORDER", "in_result_order", "Outcome", "format_result", "format_table", "summarize", "format_summary",
    "format_queue",
]  # fmt: skip

#: Result kinds from best to worst, the order of summaries.
RESULT_ORDER = ("success", "failed", "error", "crash", "timeout", "overflow", "killed")


def in_result_order(kinds: Iterable[str]) -> List[str]:
    """``kinds`` from best to worst (unknown kinds last, in their own order)."""
    return sorted(kinds, key=lambda k: RESULT_ORDER.index(k) if k in RESULT_ORDER else len(RESULT_ORDER))


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def format_result(result: ClientJobResult) -> str:
    """A result as a person reads it."""
    lines = [f"result: {result.result}", f"grade: {result.grade:g}"]
    if result.text:
        lines += ["feedback:", _indent(result.text)]
    if result.problems:
        lines.append("problems:")
        for pid, (ptype, ptext) in sorted(result.problems.items()):
            lines.append(f"  {pid}: {ptype}")
            if ptext:
                lines.append(_indent(ptext))
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: List[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join(line(r) for r in cells)


@dataclass
class Outcome:
    """What one job ended with, and when."""

    result: ClientJobResult
    latency: float


def summarize(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    """Counts by result, mean grade and latencies of several jobs (also the --json summary)."""
    counts: Dict[str, int] = {}
    for o in outcomes:
        counts[o.result.result] = counts.get(o.result.result, 0) + 1
    latencies = sorted(o.latency for o in outcomes)
    grades = [o.result.grade for o in outcomes]
    return {
        "jobs": len(outcomes),
        "by_result": {k: counts[k] for k in in_result_order(counts)},
        "mean_grade": statistics.fmean(grades) if grades else None,
        "latency_s": {
            "mean": statistics.fmean(latencies),
            "median": statistics.median(latencies),
            "max": latencies[-1],
        }
        if latencies
        else None,
    }


def format_summary(summary: Dict[str, Any]) -> str:
    """A :func:`summarize` result as a table."""
    total = summary["jobs"]
    rows = [(k, n, f"{100.0 * n / total:.1f}%") for k, n in summary["by_result"].items()]
    rows.append(("total", total, "100.0%"))
    text = format_table(("RESULT", "JOBS", "SHARE"), rows, right=(1, 2))
    if summary["mean_grade"] is not None:
        text += f"\nmean grade: {summary['mean_grade']:.2f}"
    lat = summary["latency_s"]
    if lat is not None:
        text += f"\nlatency: mean {lat['mean']:.3f} s, median {lat['median']:.3f} s, max {lat['max']:.3f} s"
    return text


def format_queue(snapshot: QueueSnapshot) -> str:
    """The running and waiting jobs as two tables."""

    def when(t: int) -> str:
        return "-" if t < 0 else time.strftime("%H:%M:%S", time.localtime(t))

    running = [
        (j.job_id, "yes" if j.is_mine else "", j.agent_name, j.task, j.launcher, when(j.started_at), when(j.max_end))
        for j in snapshot.running
    ]
    waiting = [
        (n, j.job_id, "yes" if j.is_mine else "", j.task, j.launcher, j.time_limit)
        for n, j in enumerate(snapshot.waiting, 1)
    ]
    parts = [f"running jobs: {len(running)}"]
    if running:
        parts.append(format_table(("JOB ID", "MINE", "AGENT", "TASK", "LAUNCHER", "STARTED", "ENDS BY"), running))
    parts.append(f"waiting jobs: {len(waiting)}")
    if waiting:
        parts.append(format_table(("#", "JOB ID", "MINE", "TASK", "LAUNCHER", "TIME LIMIT"), waiting, right=(0, 5)))
    return "\n".join(parts)
