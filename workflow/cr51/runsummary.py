"""The one summary line every pipeline run ends with. Standard library only.

Printed by Snakemake's ``onsuccess``/``onerror`` handlers (``workflow/rules/audit.smk``), so that a
plain ``snakemake`` run says what became of the drop folder as ``cr51-batch`` does::

    cr51: 6 plates ok (1 failing QC), 2 pending (1 settling: settle_seconds, 1 waiting for its export),
    1 rejected; reasons in results/files.csv, QC in results/qc.csv, report results/report.html

It reads ``files.csv`` and ``qc.csv`` with the ``csv`` module (a few ms for a thousand plates). When the
audit log's chain was found broken (:func:`cr51.audit.check_chain`), the line says so::

    ...; AUDIT LOG DAMAGED: the log was cut or truncated (...); recorded in results/audit.jsonl, a new chain started
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .digests import csv_rows

PREFIX = "cr51:"


def _rows(path: Path) -> list[dict[str, str]] | None:
    try:
        return csv_rows(path)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def pending_kind(reason: str) -> str:
    """A pending file's reason in two or three words."""
    if "settle_seconds" in reason:
        return "settling: settle_seconds"
    if reason.startswith("waiting for its export"):
        return "waiting for its export"
    if reason.startswith("no layout names"):
        return "no layout names them"
    return reason.split(";")[0][:40] or "waiting"


def audit_note(results_dir: str | os.PathLike, problems: Sequence[str]) -> str:
    """What a summary line says about a broken audit chain (``""`` when ``problems`` is empty)."""
    if not problems:
        return ""
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    where = Path(results_dir) / "audit.jsonl"
    return f"; AUDIT LOG DAMAGED: {problems[0]}{more}; recorded in {where}, a new chain started"


def summary_line(results_dir: str | os.PathLike, failed: bool = False, audit_problems: Sequence[str] = ()) -> str:
    """``N plates ok (F failing QC), M pending (why), K rejected``, and where to look; then what was
    wrong with the audit log's chain, if anything (``audit_problems``, :func:`audit_note`)."""
    results = Path(results_dir)
    files = _rows(results / "files.csv")
    if files is None:
        what = "the run failed" if failed else "no files.csv yet"
        return f"{PREFIX} {what}; see {results / 'logs'}" + audit_note(results, audit_problems)
    qc = _rows(results / "qc.csv") or []
    plates: dict[str, set[str]] = {}
    first_pending: dict[str, str] = {}  # each plate's first pending file's reason (one pass, not one per plate)
    pending: Counter[str] = Counter()
    orphans = Counter(pending_kind(r["reason"]) for r in files if r["status"] == "pending" and not r["plate"])
    rejected_files = sum(1 for r in files if r["status"] == "rejected" and not r["plate"])
    for r in files:
        if r["plate"]:
            plates.setdefault(r["plate"], set()).add(r["status"])
            if r["status"] == "pending":
                first_pending.setdefault(r["plate"], r["reason"])
    for plate, statuses in plates.items():
        if statuses == {"pending"}:
            pending[pending_kind(first_pending[plate])] += 1
    ok = [p for p, s in plates.items() if s == {"ok"}]
    ok_set = set(ok)
    rejected = sum(1 for s in plates.values() if "rejected" in s) + rejected_files
    failing = sum(1 for r in qc if r.get("status") == "fail" and r.get("plate") in ok_set)
    why = ", ".join(f"{n} {k}" for k, n in (pending + orphans).most_common())
    n_pending = sum(pending.values()) + sum(orphans.values())
    head = "run failed; " if failed else ""
    return (
        f"{PREFIX} {head}{len(ok)} plates ok ({failing} failing QC), {n_pending} pending"
        + (f" ({why})" if why else "")
        + f", {rejected} rejected; reasons in {results / 'files.csv'}, QC in {results / 'qc.csv'}, "
        f"report {results / 'report.html'}" + audit_note(results, audit_problems)
    )
