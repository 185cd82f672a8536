"""Concatenate the batch tables into the result tables; list every raw file; find duplicates.

Duplicates: an accepted plate whose export has the same sha256 as another accepted plate's
export is a ``duplicate`` of the one whose export was modified first (ties: file name order),
and its rows leave every result table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .plate import file_digest
from .scan import display_name
from .tables import FILES_COLUMNS, concat_frames, read_table


def table_columns() -> dict[str, list[str]]:
    """Column order of each result table."""
    from .analysis import VEHICLE_COLUMNS
    from .lysis import LYSIS_COLUMNS, WELL_COLUMNS, WELL_EXTRA
    from .potency import FITS_COLUMNS, JOINT_COLUMNS, LOTS_DIFFER_COLUMNS, POTENCY_COLUMNS
    from .qc import QC_COLUMNS, QC_EXTRA

    return {
        "files": list(FILES_COLUMNS),
        "wells": WELL_COLUMNS + WELL_EXTRA,
        "lysis": LYSIS_COLUMNS,
        "qc": QC_COLUMNS + QC_EXTRA,
        "fits": list(FITS_COLUMNS),
        "potency": [*POTENCY_COLUMNS, *VEHICLE_COLUMNS, *JOINT_COLUMNS],
        "lots_differ": list(LOTS_DIFFER_COLUMNS),
    }


def concat_tables(paths: list[str], columns: list[str]) -> pd.DataFrame:
    """Concatenate CSV tables (in the given order); an empty list gives an empty table."""
    return concat_frames([read_table(p) for p in paths], columns)


def other_files(others: list[dict], raw_dir: str, max_bytes: int) -> pd.DataFrame:
    """files.csv rows of the files the scan kept out of plates (names shown as UTF-8 text)."""
    rows = []
    for o in others:
        path = Path(raw_dir) / o["file"]
        try:
            size = os.stat(path).st_size
            sha = file_digest(path)[0] if size <= max_bytes else ""
        except OSError:  # gone since the scan
            size, sha = 0, ""
        rows.append({**o, "file": display_name(o["file"]), "sha256": sha, "bytes": size})
    return pd.DataFrame(rows, columns=FILES_COLUMNS)


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


def collect(parts: dict[str, list[str]], others: list[dict], raw_dir: str, max_bytes: int) -> dict[str, pd.DataFrame]:
    """The result tables from the batch tables ``parts`` ({table: [paths]})."""
    cols = table_columns()
    tables = {name: concat_tables(paths, cols[name]) for name, paths in parts.items()}
    files = pd.concat(
        [tables["files"], other_files(others, raw_dir, max_bytes)], ignore_index=True
    ).reindex(columns=FILES_COLUMNS)
    dup = find_duplicates(files, raw_dir)
    if dup:
        is_dup = files["plate"].isin(dup.keys()) & (files["status"] == "ok")
        files.loc[is_dup, "status"] = "duplicate"
        files.loc[is_dup, "reason"] = files.loc[is_dup, "plate"].map(
            lambda p: f"same export content as '{dup[p][1]}' of plate '{dup[p][0]}', "
            "which was accepted first"
        )
        for name in tables:
            if name != "files" and "plate" in tables[name].columns:
                tables[name] = tables[name][~tables[name]["plate"].isin(dup.keys())]
    tables["files"] = files.sort_values("file", kind="stable").reset_index(drop=True)
    for name in tables:
        if name not in ("files",) and "plate" in tables[name].columns:
            tables[name] = tables[name].sort_values("plate", kind="stable").reset_index(drop=True)
    return tables
