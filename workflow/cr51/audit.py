"""The audit log: one JSON record per pipeline run, appended to ``<results_dir>/audit.jsonl``.

Standard library only (it runs in Snakemake's ``onsuccess``/``onerror`` handlers and in the
batch runner). A record holds the run's start and end, the software versions, the
configuration hash, how many drop-folder files ended in each status, the result files written
(path + sha256) and the input changes since the runs recorded before it:

* ``new``: files decided for the first time (``ok``, ``rejected`` or ``duplicate``);
* ``replaced``: files whose content changed under the same name (a corrected re-export), with
  the ``superseded_sha256`` the earlier results were computed from;
* ``removed``: decided files that left the drop folder.

Earlier records are never rewritten: each record is one ``write`` to a file opened with
``O_APPEND``. A line that is not a JSON object (a record cut short by a crash) is skipped
when the log is read.

The log is a checksummed chain. Every record carries ``sha256`` (of the record itself: its JSON
with sorted keys, without that field) and ``prev_sha256`` (the ``sha256`` of the record before
it; ``null`` for the record that starts a chain, which carries ``seal``: the size and sha256 of
the log's bytes before it). The chain's head (its last record's sha256, the log's size and the
decided files) is also kept in ``<results_dir>/.audit-head.json``, written after each record.
:func:`check_chain` finds a missing log (the head or the archive say there were runs), a log cut
short or truncated (it no longer reaches the head), a half record, an edited record, a record
missing from the middle. Before the next record is appended, a record with ``event:
"chain_broken"`` lists what was found and starts a new chain (its seal covers the damaged bytes,
which are never rewritten). It carries the decided files the new chain starts from — the head's
list, or without a head the damaged log's readable records and the archive's plate versions —
and the input changes are computed from it, not from the damaged log: files decided before are
not reported ``new`` again. The chain detects damage and careless edits; it is not a
signature (whoever can write the results folder can forge both the log and its head).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .digests import csv_rows, result_digest
from .schema import FILE_STATUSES

AUDIT_NAME = "audit.jsonl"
#: The chain's head: the last record's sha256, the log's size, the decided files (see the module docstring).
HEAD_NAME = ".audit-head.json"
#: ``event`` of the record that says the chain was broken and starts a new one.
CHAIN_BROKEN = "chain_broken"
#: Set by the batch runner so that it finds the record Snakemake's handler wrote for its run.
RUN_ID_ENV = "CR51_RUN_ID"
#: Set by the batch runner to a note for the record (e.g. a stale lock was cleared).
NOTE_ENV = "CR51_RUN_NOTE"
#: ``status`` of a run that ``cr51-batch`` refused before Snakemake started (its ``note`` says why).
REFUSED = "refused"
STATUSES = FILE_STATUSES
DECIDED = ("ok", "rejected", "duplicate")  # statuses whose content produced results

Record = dict[str, Any]


def _parse(line: bytes) -> Record | None:
    try:
        rec = json.loads(line.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def read_records(results_dir: str | os.PathLike) -> list[Record]:
    """Every complete record of the audit log, oldest first (none if there is no log)."""
    path = Path(results_dir) / AUDIT_NAME
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        return [rec for line in fh if (rec := _parse(line)) is not None]


def record_sha(record: Record) -> str:
    """The sha256 a record carries: of its JSON (sorted keys, as written) without ``sha256``."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def read_head(results_dir: str | os.PathLike) -> Record | None:
    """The chain's head (:data:`HEAD_NAME`), ``None`` if absent or unreadable."""
    try:
        head = json.loads((Path(results_dir) / HEAD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(head, dict) and isinstance(head.get("sha256"), str) and isinstance(head.get("decided"), dict)
    return head if ok else None


def _archived_plates(results_dir: str | os.PathLike, before: str | None = None) -> dict[str, Any]:
    """The archive registry's plates (``{}`` if none or unreadable); with ``before`` (ISO 8601) only
    those first admitted earlier — evidence of earlier runs (this run admits its new plates when it
    is parsed, before its record is written)."""
    try:
        data = json.loads((Path(results_dir) / "archive" / "registry.json").read_text(encoding="utf-8"))
        plates = data["plates"]
        if before is not None:
            plates = {p: r for p, r in plates.items() if str(r["versions"][0]["admitted_at"]) < before}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return {}
    return plates if isinstance(plates, dict) else {}


@dataclass
class Chain:
    """The audit log as :func:`check_chain` found it."""

    records: list[Record]  # every complete record, oldest first (also those of a damaged log)
    problems: list[str]  # what is wrong, in words (empty: the chain is intact)
    head: str | None  # sha256 of the current chain's last record (None: no chain yet, or broken)


def check_chain(results_dir: str | os.PathLike, since: str | None = None) -> Chain:
    """Check the audit log's chain against itself and against its head file (see the module docstring).

    Damage sealed by an earlier ``chain_broken`` (or any chain-start) record is not reported again;
    records written before the log was a chain (no ``sha256``) are not damage. A missing or empty log
    is damage when the head file says there were records, or the archive holds plates admitted
    before ``since`` (the run's start, ISO 8601; ``None``: any plate).
    """
    path = Path(results_dir) / AUDIT_NAME
    head = read_head(results_dir)
    head_present = (Path(results_dir) / HEAD_NAME).exists()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if head_present:
            problems = [f"the audit log {AUDIT_NAME} is missing (its head says {head and head.get('records')} records)"]
        elif plates := _archived_plates(results_dir, since):
            problems = [f"the audit log {AUDIT_NAME} is missing, though the archive holds {len(plates)} plates"]
        else:
            problems = []  # a new results folder
        return Chain([], problems, None)
    records: list[Record] = []
    problems: list[str] = []
    shas: list[str] = []  # sha256 of the current chain's records
    last: str | None = None  # sha256 of the last record, to link to
    chained = False  # a chained record was seen (a record without sha256 after it is damage)
    offset = 0
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        rec = _parse(line)
        if rec is None:
            problems.append(f"line {number} is not a complete record (a half or damaged line)")
            last = None
            continue
        records.append(rec)
        if "sha256" not in rec:
            if chained:
                problems.append(f"the record on line {number} has no checksum")
            last = None
            continue
        chained = True
        if rec["sha256"] != record_sha(rec):
            problems.append(f"the record on line {number} was changed (its checksum does not match)")
            last = None
            continue
        if rec.get("prev_sha256") is None:  # a chain starts here: its seal covers every byte before it
            seal = rec.get("seal") or {}
            if seal.get("bytes") == start and seal.get("sha256") == hashlib.sha256(data[:start]).hexdigest():
                problems, shas = [], []  # damage before a valid seal was recorded when it was sealed
            else:
                problems.append(f"the log before line {number} was changed after the chain was started there")
        elif rec["prev_sha256"] != last:
            problems.append(f"the record on line {number} does not follow the record before it (records missing)")
        shas.append(rec["sha256"])
        last = rec["sha256"]
    if head is None and head_present:
        problems.append(f"the chain's head {HEAD_NAME} is damaged")
    elif head is not None and head["sha256"] not in shas:
        problems.append(
            f"the log was cut or truncated: it no longer reaches its last recorded run "
            f"({head.get('records')} records, {head.get('bytes')} bytes; now {len(records)} records, {len(data)} bytes)"
        )
    if not records and not problems and _archived_plates(results_dir, since):
        problems.append(f"the audit log {AUDIT_NAME} is empty, though the archive holds plates")
    return Chain(records, problems, None if problems else last)


def decided_before(results_dir: str | os.PathLike, chain: Chain, since: str) -> dict[str, Record]:
    """The decided files before this run, for its input changes: from the log when its chain is
    intact; else from the chain's head, or (no head either) from the log's readable records and the
    archive's plate versions admitted before ``since`` (the run's start, ISO 8601), so that a damaged
    log does not make every file ``new``."""
    if not chain.problems:
        return decided_files(chain.records)
    head = read_head(results_dir)
    if head is not None:
        return {str(k): dict(v) for k, v in head["decided"].items()}
    state = decided_files(chain.records)
    for plate, record in sorted(_archived_plates(results_dir).items()):
        try:
            current = record["versions"][-1]
            if str(current["admitted_at"]) >= since:
                continue  # admitted by this run: new
            for f in (current["layout"], current["export"]):
                state.setdefault(str(f["name"]), {"plate": plate, "sha256": str(f["sha256"])})
        except (KeyError, IndexError, TypeError):
            continue
    return state


def apply_changes(state: dict[str, Record], rec: Record) -> dict[str, Record]:
    """``state`` (decided files) after the input changes ``rec`` records (a new dict); a
    ``chain_broken`` record restarts from the decided files it carries."""
    if rec.get("event") == CHAIN_BROKEN and isinstance(rec.get("decided"), dict):
        return {str(k): dict(v) for k, v in rec["decided"].items()}
    state = dict(state)
    for entry in rec.get("new", []) + rec.get("replaced", []):
        state[entry["file"]] = {"plate": entry["plate"], "sha256": entry["sha256"]}
    for entry in rec.get("removed", []):
        state.pop(entry["file"], None)
    return state


def decided_files(records: list[Record]) -> dict[str, Record]:
    """The decided files as the recorded runs left them: ``{file: {"plate", "sha256"}}``."""
    state: dict[str, Record] = {}
    for rec in records:
        state = apply_changes(state, rec)
    return state


def files_rows(results_dir: str | os.PathLike) -> list[dict[str, str]] | None:
    """The rows of ``files.csv`` (``None`` if the run has not written one)."""
    path = Path(results_dir) / "files.csv"
    if not path.exists():
        return None
    return csv_rows(path)


def input_changes(before: dict[str, Record], rows: list[dict[str, str]]) -> Record:
    """``new``, ``replaced`` and ``removed`` files between ``before`` and ``files.csv`` rows."""
    now = {
        r["file"]: {"plate": r["plate"], "sha256": r["sha256"]} for r in rows if r["status"] in DECIDED and r["sha256"]
    }
    new, replaced = [], []
    for name, cur in sorted(now.items()):
        old = before.get(name)
        if old is None:
            new.append({"file": name, **cur})
        elif old["sha256"] != cur["sha256"]:
            replaced.append({"file": name, **cur, "superseded_sha256": old["sha256"]})
    removed = [
        {"file": name, "plate": old["plate"], "superseded_sha256": old["sha256"]}
        for name, old in sorted(before.items())
        if name not in now
    ]
    return {"new": new, "replaced": replaced, "removed": removed}


def written_outputs(results_dir: str | os.PathLike, since: float) -> list[Record]:
    """Result files (top level of ``results_dir``) modified at or after ``since``, with sha256."""
    out = []
    for entry in sorted(os.scandir(results_dir), key=lambda e: e.name):
        if (
            entry.is_file()
            and not entry.name.startswith(".")
            and entry.name != AUDIT_NAME
            and entry.stat().st_mtime >= since
        ):
            out.append({"path": os.path.abspath(entry.path), "sha256": result_digest(entry.path) or ""})
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_record(
    results_dir: str | os.PathLike,
    *,
    status: str,
    start: float,
    config_hash: str | None,
    invoked_by: str,
    logs: list[str] | None = None,
    note: str = "",
    exit_code: int | None = None,
    run_id: str | None = None,
) -> Record:
    """The record of a run that started at ``start`` (epoch seconds) and ends now.

    File counts and input changes come from ``files.csv`` and are only recorded for a run
    with ``status == "ok"`` (a failed run has not rewritten ``files.csv``). A run with status
    :data:`REFUSED` wrote nothing: its ``outputs`` stay empty (files another run wrote meanwhile
    are not its own). ``exit_code`` is ``cr51-batch``'s exit code (``None`` in Snakemake's handlers);
    ``run_id`` the run's id (default: :data:`RUN_ID_ENV`, else a new one).
    """
    from . import __version__

    rows = files_rows(results_dir) if status == "ok" else None
    counts = None if rows is None else {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    changes = (
        {"new": [], "replaced": [], "removed": []}
        if rows is None
        else input_changes(decided_before(results_dir, check_chain(results_dir, _iso(start)), _iso(start)), rows)
    )
    return {
        "run_id": run_id or os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex,
        "start": _iso(start),
        "end": _iso(time.time()),
        "status": status,
        "invoked_by": invoked_by,
        "note": note,
        "cr51_version": __version__,
        "snakemake_version": _version("snakemake"),
        "python_version": platform.python_version(),
        "config_hash": config_hash,
        "results_dir": os.path.abspath(results_dir),
        "logs": logs or [],
        "files": counts,
        "exit_code": exit_code,
        "outputs": [] if status == REFUSED else written_outputs(results_dir, start),
        "retractions": [
            {"plate": r["plate"], "file": r["file"], "reason": r["reason"]}
            for r in rows or []
            if r["status"] == "retracted" and r["file"].endswith(".retract")
        ],
        **changes,
    }


def _line(record: Record) -> bytes:
    return (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def _sealed(record: Record, prev: str | None, prefix: bytes | None = None) -> Record:
    """``record`` linked to ``prev`` (or, as a chain start, sealing ``prefix``), with its ``sha256``."""
    out = {k: v for k, v in record.items() if k not in ("sha256", "prev_sha256", "seal")}
    out["prev_sha256"] = prev
    if prev is None:
        out["seal"] = {"bytes": len(prefix or b""), "sha256": hashlib.sha256(prefix or b"").hexdigest()}
    out["sha256"] = record_sha(out)
    return out


def append_record(results_dir: str | os.PathLike, record: Record | None, start: str | None = None) -> list[str]:
    """Append ``record`` to the chain as one line, in one ``write`` to a file opened with ``O_APPEND``;
    return the problems :func:`check_chain` found (empty when the chain was intact).

    A broken chain first gets a ``chain_broken`` record (the problems, the run's ``run_id``) that
    starts a new chain (``record`` ``None``: only that record, if the chain is broken; ``start``: the
    run's start, ISO 8601, when ``record`` does not say it). A line left
    without its newline by a crash is closed first, so it cannot swallow the record. Then the
    chain's head (:data:`HEAD_NAME`) is rewritten.
    """
    results = Path(results_dir)
    path = results / AUDIT_NAME
    now = _iso(time.time())
    since = str((record or {}).get("start") or start or now)
    chain = check_chain(results, since)
    try:
        prefix = path.read_bytes()
    except FileNotFoundError:
        prefix = b""
    lead = b"\n" if prefix and not prefix.endswith(b"\n") else b""
    prefix += lead
    state = decided_before(results, chain, since)
    out: list[Record] = []
    if chain.problems:
        run_id = (record or {}).get("run_id") or os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex
        broken = {
            "event": CHAIN_BROKEN,
            "run_id": run_id,
            "time": now,
            "problems": chain.problems,
            "note": "the audit log's chain was broken; this record starts a new chain (the damaged bytes are kept)",
            "decided": state,  # the decided files the new chain starts from (decided_before)
        }
        out.append(_sealed(broken, None, prefix))
    if record is not None:
        prev = out[-1]["sha256"] if out else chain.head
        out.append(_sealed(record, prev, prefix))  # prev None: a new log, or records from before the chain
    if not out:
        return []
    data = lead + b"".join(_line(r) for r in out)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"audit log: only {written} of {len(data)} bytes written (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)
    head = {
        "sha256": out[-1]["sha256"],
        "bytes": len(prefix) - len(lead) + len(data),
        "records": len(chain.records) + len(out),
        "decided": apply_changes(state, record or {}),
    }
    tmp = results / f".{HEAD_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(head, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        os.replace(tmp, results / HEAD_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    return chain.problems


def repair_chain(results_dir: str | os.PathLike, start: float) -> list[str]:
    """For a run that appends no record of its own (plain Snakemake with nothing to do) and started at
    ``start``: if the chain is broken, append the ``chain_broken`` record that starts a new one;
    return the problems found."""
    if not check_chain(results_dir, _iso(start)).problems:
        return []
    return append_record(results_dir, None, _iso(start))


def record_run(
    results_dir: str | os.PathLike,
    status: str,
    start: float,
    config_hash: str,
    log: str | list[str] | None,
) -> list[str]:
    """Snakemake handler entry point: append the record of this Snakemake run; return the problems
    found in the audit log's chain (:func:`append_record`: recorded, a new chain started).

    ``log`` is what Snakemake hands its handlers: the run's log file(s).
    """
    logs = [log] if isinstance(log, str) else list(log or [])
    invoked_by = "cr51-batch" if os.environ.get(RUN_ID_ENV) else "snakemake"
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    return append_record(
        results_dir,
        build_record(
            results_dir,
            status=status,
            start=start,
            config_hash=config_hash,
            invoked_by=invoked_by,
            note=os.environ.get(NOTE_ENV, ""),
            logs=[os.path.abspath(f) for f in logs],
        ),
    )
