"""Concatenate the batch outputs into the result tables; list every raw file; find duplicates.

Every result table is sorted by plate (``files.csv`` by file). Each plate rendered its rows of every
table once, in its batch job; the tables are written by concatenating those rows in plate order —
byte for byte what writing the concatenated table gives, because every plate's rows were rendered
from the kinds the schema declares (:func:`cr51.tables.render_rows`). No plate's frames are read
back: collect's work grows with the bytes of the tables, not with parsing them. Only ``files.csv``
(a few rows a plate) is built as a frame, to mark duplicates and add the files in no plate.

Duplicates: an accepted plate whose export has the same sha256 as another accepted plate's
export is a ``duplicate`` of the one whose export was modified first (ties: file name order),
and its rows leave every result table.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .digests import file_digest
from .report.page import RunChanges
from .scan import display_name
from .schema import FILES, PLATE_TABLES, TABLES
from .tables import Rows, concat_frames, write_rows, write_table

if TYPE_CHECKING:
    from .batch import BatchOutput


def other_files(others: list[dict], raw_dir: str, max_bytes: int) -> pd.DataFrame:
    """files.csv rows of the files the scan kept out of plates (names shown as UTF-8 text)."""
    rows = []
    for o in others:
        path = Path(raw_dir) / o["file"]
        try:
            st = os.stat(path, follow_symlinks=False)
            regular = stat.S_ISREG(st.st_mode) and o["status"] != "ignored"  # never open a FIFO or a device
            size = st.st_size if regular else 0
            sha = file_digest(path)[0] if regular and size <= max_bytes else ""
        except OSError:  # gone since the scan
            size, sha = 0, ""
        rows.append({**o, "file": display_name(o["file"]), "sha256": sha, "bytes": size})
    return pd.DataFrame(rows, columns=list(FILES.names))


def find_duplicates(files: pd.DataFrame, raw_dir: str) -> dict[str, tuple[str, str]]:
    """Plates whose export duplicates an earlier accepted plate's: {plate: (original plate, export)}."""
    ok = files[(files["status"] == "ok") & files["plate"].notna()]
    exports = ok[~ok["file"].str.lower().str.endswith(".toml")]  # layouts end in .toml
    dup: dict[str, tuple[str, str]] = {}
    for _, grp in exports.groupby("sha256"):
        if len(grp) < 2:
            continue

        def key(row):
            try:
                mtime = os.stat(Path(raw_dir) / row.file).st_mtime
            except OSError:
                mtime = float("inf")
            return (mtime, row.file)

        ordered = sorted(grp.itertuples(), key=key)
        first = ordered[0]
        for row in ordered[1:]:
            dup[row.plate] = (first.plate, first.file)
    return dup


@dataclass
class Collected:
    """The result tables: ``files`` as a frame, the others as rendered rows in plate order."""

    files: pd.DataFrame
    rows: dict[str, list[Rows]] = field(default_factory=dict)

    def write(self, name: str, path: str | os.PathLike) -> None:
        """Write table ``name`` as the CSV at ``path``."""
        if name == "files":
            write_table(self.files, path, FILES)
        else:
            write_rows(path, TABLES[name], self.rows[name])


def plate_rows(batches: Sequence[BatchOutput], name: str, dropped: set[str]) -> list[Rows]:
    """Rendered rows of table ``name`` in plate order, leaving out ``dropped`` plates."""
    parts = sorted(
        ((plate, rows) for b in batches for plate, rows in b.rows.get(name, []) if plate not in dropped),
        key=lambda item: item[0],
    )
    return [r for _, r in parts]


def collect(batches: Sequence[BatchOutput], others: list[dict], raw_dir: str, max_bytes: int) -> Collected:
    """The result tables from the batch outputs."""
    from .batch import frame_of

    plate_files = frame_of(plate_rows(batches, "files", set()), FILES)
    files = concat_frames([plate_files, other_files(others, raw_dir, max_bytes)], FILES.names)
    dup = find_duplicates(files, raw_dir)
    if dup:
        is_dup = files["plate"].isin(dup.keys()) & (files["status"] == "ok")
        files.loc[is_dup, "status"] = "duplicate"
        files.loc[is_dup, "reason"] = files.loc[is_dup, "plate"].map(
            lambda p: f"same export content as '{dup[p][1]}' of plate '{dup[p][0]}', which was accepted first"
        )
    out = Collected(files.sort_values("file", kind="stable").reset_index(drop=True))
    for name in PLATE_TABLES:
        if name != "files":
            out.rows[name] = plate_rows(batches, name, set(dup))
    return out


def products(batches: Sequence[BatchOutput]) -> dict[str, str]:
    """{lot: product} over the run: each lot's product on the first plate (in plate order) that names one."""
    by_plate = {plate: lots for b in batches for plate, lots in b.products.items()}
    out: dict[str, str] = {}
    for plate in sorted(by_plate):
        for lot, product in by_plate[plate].items():
            out.setdefault(lot, product)
    return out


def prune_plate_files(results_dir: str | os.PathLike, batches: Sequence[BatchOutput]) -> list[str]:
    """Remove the plate pages and figures (``plates/*.html``, ``figures/plates/*.svg``) that no batch
    output lists (a plate retracted or gone from every batch); the removed paths, relative to ``results_dir``."""
    root = Path(results_dir)
    owned = {f for b in batches for fs in b.files.values() for f in fs}
    removed = []
    for folder, suffix in (("plates", ".html"), ("figures/plates", ".svg")):
        d = root / folder
        if not d.is_dir():
            continue
        for entry in sorted(os.scandir(d), key=lambda e: e.name):  # 20,000 files at 10,000 plates
            rel = f"{folder}/{entry.name}"
            if rel not in owned and entry.name.endswith(suffix) and entry.is_file():
                os.unlink(entry.path)
                removed.append(rel)
    return removed


def plate_history(
    results_dir: str | os.PathLike, batches: Sequence[BatchOutput], potency: pd.DataFrame, qc: pd.DataFrame, now: float
) -> pd.DataFrame:
    """Update ``archive/history.json`` with this run's accepted versions and return plate_history.csv.

    A plate's version is *accepted* when it has a QC row; when a plate's accepted version changes (a
    corrected re-export), the previous entry gets ``replaced_at`` and keeps its relative potencies,
    so that superseded numbers stay readable. The current entry's numbers follow the latest run.
    """
    from .archive import FORMAT, HISTORY, iso, read_json, write_json

    path = Path(results_dir) / "archive" / HISTORY
    data = read_json(path, "the plate history") or {"format": FORMAT, "plates": {}}
    hist: dict[str, list[dict]] = data["plates"]
    accepted = set(qc["plate"].astype(str))
    versions = {p: v for b in batches for p, v in b.versions.items() if p in accepted and v}
    rows_of = _history_potency(potency)
    stamp = iso(now)
    for plate, version in sorted(versions.items()):
        entries = hist.setdefault(plate, [])
        current = next((e for e in reversed(entries) if e["replaced_at"] is None), None)
        if current is not None and current["version"] == version:
            current["potency"] = rows_of.get(plate, [])
            continue
        if current is not None:
            current["replaced_at"] = stamp
        entries.append(
            {"version": version, "accepted_at": stamp, "replaced_at": None, "potency": rows_of.get(plate, [])}
        )
    if hist or path.exists():
        write_json(path, data)
    return _history_table(hist, _registered(results_dir), accepted)


#: The potency.csv columns a history entry keeps of each of its plate's rows.
HISTORY_POTENCY = ("lot", "rp", "rp_lo", "rp_hi", "status")


def _history_potency(potency: pd.DataFrame) -> dict[str, list[dict]]:
    """{plate: its potency rows as history entries keep them}: :data:`HISTORY_POTENCY`, missing values
    as None; read column by column (a frame per plate cost ~6 ms a plate, a dict per row and a
    ``pd.isna`` per cell most of the rest)."""
    cols = list(HISTORY_POTENCY)
    columns = []
    for c in cols:
        values, gone = potency[c].tolist(), potency[c].isna().tolist()
        columns.append([None if m else v for v, m in zip(values, gone)])
    rows_of: dict[str, list[dict]] = {}
    for plate, *values in zip(potency["plate"].tolist(), *columns):
        rows_of.setdefault(str(plate), []).append(dict(zip(cols, values)))
    return rows_of


def _registered(results_dir: str | os.PathLike) -> dict[str, dict[int, tuple[str, str, str, str]]]:
    """{plate: {version: (layout sha256, export sha256, templates' sha256 space-separated, admitted_at)}}
    from the archive registry, read as JSON (the registry's objects, :class:`cr51.archive.Archive`, took
    longer to build than the JSON to parse)."""
    from .archive import ARCHIVE, REGISTRY, read_json

    data = read_json(Path(results_dir) / ARCHIVE / REGISTRY, "the archive registry") or {"plates": {}}
    return {
        plate: {
            int(v["version"]): (
                v["layout"]["sha256"],
                v["export"]["sha256"],
                " ".join(t["sha256"] for t in v["templates"]),
                str(v["admitted_at"]),
            )
            for v in record["versions"]
        }
        for plate, record in data["plates"].items()
    }


def _history_table(
    hist: dict[str, list[dict]], registered: dict[str, dict[int, tuple[str, str, str, str]]], accepted: set[str]
) -> pd.DataFrame:
    """plate_history.csv: a row per history entry and potency row (one without potency when it has
    none), plates in name order; the version's archive facts where the registry has the version."""
    import numpy as np

    columns = list(TABLES["plate_history"].names)
    absent = [np.nan] * len(columns)  # a column the row lacks (as a frame from the row dicts fills it)
    rows = []
    nothing = ("", "", "", "")
    for plate, entries in sorted(hist.items()):
        known = registered.get(plate, {})
        for e in entries:
            layout, export, templates, admitted = known.get(e["version"], nothing)
            base = {
                "plate": plate,
                "version": e["version"],
                "layout_sha256": layout,
                "export_sha256": export,
                "templates_sha256": templates,
                "admitted_at": admitted,
                "accepted_at": e["accepted_at"],
                "replaced_at": e["replaced_at"] or "",
                "current": e["replaced_at"] is None and plate in accepted,
            }
            for r in e["potency"] or [{}]:
                row = {**base, **r}
                rows.append(list(map(row.get, columns, absent)))
    return pd.DataFrame(rows, columns=columns)


def prune_pages(results_dir: str | os.PathLike, keep: set[str]) -> list[str]:
    """Remove the lot and campaign pages (``lots/*.html``, ``campaigns/*.html``) not in ``keep`` (paths
    relative to ``results_dir``): a lot or campaign no longer in the results. The removed paths."""
    removed = []
    for folder in ("lots", "campaigns"):
        d = Path(results_dir) / folder
        for path in sorted(d.glob("*.html")) if d.is_dir() else []:
            rel = f"{folder}/{path.name}"
            if rel not in keep and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(rel)
    return removed


#: What the previous collect saw (``results/.run-state.json``): the index's "this run" compares with it.
RUN_STATE = ".run-state.json"


def run_changes(results_dir: str | os.PathLike, files: pd.DataFrame, versions: dict[str, int]) -> RunChanges:
    """Compare this run's files.csv rows and accepted plate versions with the previous run's record,
    then replace the record (written atomically; a damaged or missing record: everything is new)."""
    import json

    from .tables import write_text_atomic

    path = Path(results_dir) / RUN_STATE
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        old_files, old_versions, previous = dict(old["files"]), dict(old["versions"]), True
    except (OSError, ValueError, KeyError, TypeError):
        old_files, old_versions, previous = {}, {}, False
    names = [str(f) for f in files["file"].tolist()]
    now = {name: [status, sha] for name, status, sha in zip(names, _texts(files["status"]), _texts(files["sha256"]))}
    rows = []
    for name, plate, reason in zip(names, files["plate"].tolist(), files["reason"].tolist()):
        before = old_files.get(name)
        if before is None:
            change = "new"
        elif before[1] and now[name][1] and before[1] != now[name][1]:
            change = "replaced"
        elif before[0] != now[name][0]:
            change = f"status (was {before[0]})"
        else:
            continue
        rows.append({"file": name, "status": now[name][0], "plate": plate, "reason": reason, "change": change})
    for name in sorted(set(old_files) - set(now)):
        rows.append({"file": name, "status": "", "plate": "", "reason": "", "change": "removed"})
    plates = {p: v for p, v in sorted(versions.items()) if old_versions.get(p) != v}
    state = {"files": now, "versions": versions}
    text = json.dumps(state, ensure_ascii=False, separators=(",", ":"))  # json.dump: the pure-Python encoder
    write_text_atomic(path, lambda fh: fh.write(text))
    return RunChanges(rows, plates, previous)


def _texts(column: pd.Series) -> list[str]:
    """A column's values as text, missing ones as ``""``."""
    return ["" if gone else str(v) for v, gone in zip(column.tolist(), column.isna().tolist())]
