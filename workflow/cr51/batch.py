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
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import analyse_batch
from .collect import table_columns
from .plate import PlateInput, ingest_batch
from .report import Section, plate_sections
from .scan import code_digest, content_digest
from .tables import Rows, concat_frames, render_rows

log = logging.getLogger(__name__)
CACHE_FORMAT = "cr51-plate-cache-2"


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
    """What a batch job writes (``results/batches/<batch>.pkl``, read by ``collect``): every table
    of its plates, in plate order; per text table the rendered rows of each plate that has rows;
    the report sections by plate."""

    tables: dict[str, pd.DataFrame]
    rows: dict[str, list[tuple[str, Rows]]]
    sections: dict[str, Section]


def save_batch(out: BatchOutput, path: str | os.PathLike) -> None:
    """Write a batch's output atomically (pickle: an intermediate between jobs of the same code)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_batch(path: str | os.PathLike) -> BatchOutput:
    """Read what :func:`save_batch` wrote."""
    with open(path, "rb") as fh:
        out = pickle.load(fh)
    if not isinstance(out, BatchOutput):
        raise TypeError(f"{path} does not hold a batch output")
    return out


class PlateCache:
    """Per-plate results on disk (``<directory>/<key>.pkl``), keyed by content, not by time.

    The folder belongs to the pipeline (inside ``results_dir``); nothing else writes there.
    """

    def __init__(self, directory: str | os.PathLike, settings: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        salt = json.dumps(settings, sort_keys=True, default=str)
        self._salt = hashlib.sha256(f"{CACHE_FORMAT}\n{code_digest()}\n{salt}".encode()).digest()
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
        self.used.add(key)
        try:
            with open(self.directory / f"{key}.pkl", "rb") as fh:
                out = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            return None
        return out if isinstance(out, PlateOutput) else None

    def put(self, key: str, out: PlateOutput) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.directory / f"{key}.pkl")

    def prune(self) -> None:
        """Remove the entries this run did not use (superseded plates, old settings or code)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.suffix == ".pkl" and path.stem not in self.used:
                path.unlink(missing_ok=True)


def process_plate(plate: PlateInput, settings: Mapping[str, Any]) -> PlateOutput:
    """One plate's tables — files, wells, lysis, qc; fits, potency, lots_differ — rows and section."""
    tables = ingest_batch([plate], settings)
    tables.update(analyse_batch(tables["wells"], tables["qc"], settings))
    columns = table_columns()
    rows = {name: render_rows(tables[name], columns[name]) for name in TEXT_TABLES}
    return PlateOutput(tables, rows, plate_sections(tables, settings))


def process_batch(
    plates: list[PlateInput], settings: Mapping[str, Any], cache: PlateCache | None = None
) -> BatchOutput:
    """Every plate of a batch (in the given order), from ``cache`` where it holds the plate."""
    max_bytes = int(settings["max_export_bytes"])
    outs = []
    hits = 0
    for plate in plates:
        key = cache.key(plate, max_bytes) if cache else ""
        out = cache.get(key) if cache else None
        if out is None:
            out = process_plate(plate, settings)
            if cache:
                cache.put(key, out)
        else:
            hits += 1
        outs.append(out)
    if cache:
        cache.prune()
        log.info("%d plate(s), %d read back from the plate cache", len(plates), hits)
    columns = table_columns()
    tables = {name: concat_frames([o.tables[name] for o in outs], columns[name]) for name in columns}
    rows = {
        name: [(p.name, r) for p, o in zip(plates, outs) if (r := o.rows[name]) is not None] for name in TEXT_TABLES
    }
    sections = {k: v for o in outs for k, v in o.sections.items()}
    return BatchOutput(tables, rows, sections)
