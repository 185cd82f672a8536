"""One batch job: every plate of the batch from raw files to potency and its report sections, in one process.

Plates are processed one at a time and their results concatenated in plate order, so a plate's
rows do not depend on its batch. A :class:`PlateCache` keeps each plate's results under a key
made of everything they depend on (the plate's file contents, the settings and the package's
source code): when a batch reruns because one plate was added or changed, the other plates are
read back instead of recomputed. A stale key is never read; entries a run did not use are removed.
Each plate also renders its rows of the per-well tables to CSV text once (:data:`TEXT_TABLES`), for
``collect`` to concatenate (see :mod:`cr51.collect`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import store
from .digests import content_digest, software_digest
from .plate import PlateInput, analyse_batch, ingest_batch, rejected_tables
from .report import Section, plate_sections
from .schema import PLATE_TABLES, TABLES
from .settings import Analysis
from .store import StaleFile
from .tables import Rows, concat_frames, frame_from_data, frame_to_data, render_rows

log = logging.getLogger(__name__)


#: Tables each plate renders to CSV text once, so that ``collect`` writes them by concatenation
#: (the per-well tables: ~200 rows a plate, most of the bytes and of the time to write them).
TEXT_TABLES = ("wells", "lysis")


@dataclass(frozen=True)
class PlateOutput:
    """One plate's results: its tables, its rows of :data:`TEXT_TABLES` rendered for the result
    CSVs, and its report section (``{plate: Section}``, empty for a plate without a QC row)."""

    tables: dict[str, pd.DataFrame]
    rows: dict[str, Rows | None]
    sections: dict[str, Section]


@dataclass(frozen=True)
class BatchOutput:
    """What a batch job writes (``results/batches/<batch>.jsonl``, read by ``collect``): every table
    of its plates, in plate order; per text table the rendered rows of each plate that has rows;
    the report sections by plate."""

    tables: dict[str, pd.DataFrame]
    rows: dict[str, list[tuple[str, Rows]]]
    sections: dict[str, Section]
    versions: dict[str, int] = field(default_factory=dict)  # plate -> archived version its results are from


#: Stored-file kinds and formats (:mod:`cr51.store`); a change of what is stored bumps the format.
BATCH_KIND, PLATE_KIND, STORE_FORMAT = "cr51-batch", "cr51-plate", 4


def _rows_to_data(rows: Rows | None) -> dict | None:
    return None if rows is None else {"table": rows.table, "text": rows.text}


def _rows_from_data(data: dict | None) -> Rows | None:
    return None if data is None else Rows(str(data["table"]), str(data["text"]))


def plate_to_data(out: PlateOutput) -> dict[str, Any]:
    """A plate's results as plain data (JSON): tables, rendered rows, sections; no code."""
    return {
        "tables": {k: frame_to_data(v) for k, v in out.tables.items()},
        "rows": {k: _rows_to_data(v) for k, v in out.rows.items()},
        "sections": {k: v.to_dict() for k, v in out.sections.items()},
    }


def plate_from_data(data: dict[str, Any]) -> PlateOutput:
    return PlateOutput(
        {k: frame_from_data(v) for k, v in data["tables"].items()},
        {k: _rows_from_data(v) for k, v in data["rows"].items()},
        {k: Section.from_dict(v) for k, v in data["sections"].items()},
    )


def batch_to_data(out: BatchOutput) -> dict[str, Any]:
    """A batch output as plain data (JSON)."""
    return {
        "tables": {k: frame_to_data(v) for k, v in out.tables.items()},
        "rows": {k: [[plate, _rows_to_data(r)] for plate, r in v] for k, v in out.rows.items()},
        "sections": {k: v.to_dict() for k, v in out.sections.items()},
        "versions": out.versions,
    }


def batch_from_data(data: dict[str, Any]) -> BatchOutput:
    return BatchOutput(
        {k: frame_from_data(v) for k, v in data["tables"].items()},
        {k: [(str(plate), _rows_from_data(r)) for plate, r in v] for k, v in data["rows"].items()},
        {k: Section.from_dict(v) for k, v in data["sections"].items()},
        {str(k): int(v) for k, v in data["versions"].items()},
    )


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode(payload: bytes, what: str, build: Callable[[dict[str, Any]], Any]) -> Any:
    """``build(json.loads(payload))``; :class:`StaleFile` for anything that is not such data."""
    try:
        return build(json.loads(payload.decode("utf-8")))
    except Exception as err:  # noqa: BLE001 - any failure to decode means: not usable
        raise StaleFile(f"does not hold {what} ({type(err).__name__})") from None


def save_batch(out: BatchOutput, path: str | os.PathLike) -> None:
    """Write a batch's output atomically: a header (:mod:`cr51.store`), then JSON data (never code)."""
    store.write(path, BATCH_KIND, STORE_FORMAT, _encode(batch_to_data(out)))


def load_batch(path: str | os.PathLike) -> BatchOutput:
    """Read what :func:`save_batch` wrote; :class:`cr51.store.StaleFile` when it cannot be used
    (other software, damaged, not a batch output)."""
    return _decode(store.read(path, BATCH_KIND, STORE_FORMAT), "a batch output", batch_from_data)


def load_batches(paths: list[str]) -> list[BatchOutput]:
    """Every batch output of ``paths``; one that cannot be used is removed (so that the next run
    recomputes it) and the run stops with the reason: a result from other software is never mixed in."""
    out = []
    for path in paths:
        try:
            out.append(load_batch(path))
        except StaleFile as err:
            Path(path).unlink(missing_ok=True)
            raise RuntimeError(f"batch output {path} {err}: removed; the next run recomputes it") from None
    return out


class PlateCache:
    """Per-plate results on disk (``<directory>/<key>.jsonl``), keyed by content, not by time.

    The key covers the plate's name and file contents, the analysis settings and the software (code
    digest, Python and library versions); each entry carries a checked header (:mod:`cr51.store`).
    An entry that cannot be used is recomputed, with a note in the batch log. The folder belongs to
    the pipeline (inside ``results_dir``); nothing else writes there.
    """

    def __init__(self, directory: str | os.PathLike, settings: Analysis | Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        salt = json.dumps(Analysis.of(settings).to_dict(), sort_keys=True)
        self._salt = hashlib.sha256(f"{STORE_FORMAT}\n{software_digest()}\n{salt}".encode()).digest()
        self.used: set[str] = set()

    def key(self, plate: PlateInput, max_bytes: int) -> str:
        """Digest of the plate's name and the contents of its layout, templates and export (the
        scan's digest, computed at parse time, where the plate carries it)."""
        content = plate.digest or content_digest([plate.layout, *plate.includes, plate.export], max_bytes)
        h = hashlib.sha256(self._salt)
        h.update(plate.name.encode("utf-8", "surrogateescape"))
        h.update(content.encode())
        return h.hexdigest()

    def get(self, key: str) -> PlateOutput | None:
        """The entry stored under ``key``, or ``None`` (absent, or not usable: noted in the log)."""
        self.used.add(key)
        path = self.directory / f"{key}.jsonl"
        if not path.exists():
            return None
        try:
            out = _decode(store.read(path, PLATE_KIND, STORE_FORMAT), "a plate's results", plate_from_data)
        except Exception as err:  # noqa: BLE001 - a bad entry is recomputed, never fatal
            log.warning("plate cache entry %s %s: recomputing the plate", path.name, err)
            return None
        return out

    def put(self, key: str, out: PlateOutput) -> None:
        store.write(self.directory / f"{key}.jsonl", PLATE_KIND, STORE_FORMAT, _encode(plate_to_data(out)))

    def prune(self) -> None:
        """Remove the entries this run did not use (superseded plates, old settings or code)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.suffix == ".jsonl" and path.stem not in self.used:
                path.unlink(missing_ok=True)


def process_plate(plate: PlateInput, settings: Analysis | Mapping[str, Any]) -> PlateOutput:
    """One plate's tables — files, wells, lysis, qc; fits, potency, lots_differ — rows and section."""
    settings = Analysis.of(settings)
    tables = ingest_batch([plate], settings)
    tables.update(analyse_batch(tables["wells"], tables["qc"], settings))
    rows = {name: render_rows(tables[name], TABLES[name]) for name in TEXT_TABLES}
    return PlateOutput(tables, rows, plate_sections(tables, settings))


def guarded(plate: PlateInput, settings: Analysis, err: BaseException) -> PlateOutput:
    """The output of a plate whose processing raised ``err``: both files ``rejected`` with the reason."""
    reason = f"internal error while processing this plate ({type(err).__name__}); see the batch log"
    tables = rejected_tables(plate, reason, settings.max_export_bytes)
    return PlateOutput(tables, {name: render_rows(tables[name], TABLES[name]) for name in TEXT_TABLES}, {})


def with_notes(out: PlateOutput, notes: dict[str, tuple[str, str]]) -> PlateOutput:
    """``out`` with the files.csv rows of the noted files changed (status "": the row is left out,
    the drop folder's own row speaks for that file)."""
    if not notes:
        return out
    files = out.tables["files"].copy()
    keep = []
    for i, name in enumerate(files["file"]):
        status, reason = notes.get(name, (None, None))
        if status == "":
            continue
        if status is not None:
            files.loc[files.index[i], ["status", "reason"]] = [status, reason]
        keep.append(files.index[i])
    return replace(out, tables={**out.tables, "files": files.loc[keep].reset_index(drop=True)})


def kept_version(refused: PlateOutput, kept: PlateOutput, version: int) -> PlateOutput:
    """The results of the accepted version ``kept``, with the refused version's files.csv rows saying
    why it was refused and that the plate keeps ``version``."""
    files = refused.tables["files"].copy()
    files["reason"] = files["reason"] + f"; the plate keeps its accepted version {version}"
    older = kept.tables["files"][~kept.tables["files"]["file"].isin(files["file"])]
    both = concat_frames([files, older], TABLES["files"].names)
    return replace(kept, tables={**kept.tables, "files": both})


def refused(out: PlateOutput) -> bool:
    """Whether the plate's version was refused (no QC row: its files are rejected)."""
    return out.tables["qc"].empty and bool((out.tables["files"]["status"] == "rejected").any())


def process_batch(
    plates: list[PlateInput], settings: Analysis | Mapping[str, Any], cache: PlateCache | None = None
) -> BatchOutput:
    """Every plate of a batch (in the given order), from ``cache`` where it holds the plate.

    A plate version the pipeline refuses, whose plate has an accepted version (``fallback``), keeps
    the accepted version's results (:func:`kept_version`); the scan's notes on the plate's files
    (gone from the drop folder, a re-export settling) are applied last (:func:`with_notes`).
    """
    settings = Analysis.of(settings)
    max_bytes = settings.max_export_bytes
    outs, versions = [], {}
    hits = 0

    def get(plate: PlateInput) -> PlateOutput:
        nonlocal hits
        key = cache.key(plate, max_bytes) if cache else ""
        out = cache.get(key) if cache else None
        if out is None:
            try:
                out = process_plate(plate, settings)
            except Exception as err:  # noqa: BLE001 - one plate never takes the batch down (not cached: retried)
                log.exception("plate %r: unexpected error", plate.name)
                out = guarded(plate, settings, err)
            else:
                if cache:
                    cache.put(key, out)
        else:
            hits += 1
        return out

    for plate in plates:
        out, version = get(plate), plate.version
        fallback = plate.fallback_input()
        if fallback is not None and refused(out):
            out, version = kept_version(out, get(fallback), fallback.version), fallback.version
        outs.append(with_notes(out, dict(plate.notes)))
        versions[plate.name] = version
    if cache:
        cache.prune()
        log.info("%d plate(s), %d read back from the plate cache", len(plates), hits)
    tables = {name: concat_frames([o.tables[name] for o in outs], TABLES[name].names) for name in PLATE_TABLES}
    rows = {
        name: [(p.name, r) for p, o in zip(plates, outs) if (r := o.rows[name]) is not None] for name in TEXT_TABLES
    }
    sections = {k: v for o in outs for k, v in o.sections.items()}
    return BatchOutput(tables, rows, sections, versions)
