"""One batch job: every plate of the batch from raw files to potency and its report sections, in one process.

Plates are processed one at a time and their results concatenated in plate order, so a plate's
rows do not depend on its batch. A :class:`PlateCache` keeps each plate's results under a key
made of everything they depend on (the plate's file contents, the settings and the package's
source code): when a batch reruns because one plate was added or changed, the other plates are
read back instead of recomputed. A stale key is never read; entries a run did not use are removed.
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
from .report import plate_sections
from .scan import code_digest, content_digest
from .tables import concat_frames

log = logging.getLogger(__name__)
CACHE_FORMAT = "cr51-plate-cache-1"


@dataclass(frozen=True)
class BatchOutput:
    """What a batch job writes: its tables and its plates' report sections (``plates.html``)."""

    tables: dict[str, pd.DataFrame]
    plates_html: str


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

    def get(self, key: str) -> BatchOutput | None:
        self.used.add(key)
        try:
            with open(self.directory / f"{key}.pkl", "rb") as fh:
                out = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            return None
        return out if isinstance(out, BatchOutput) else None

    def put(self, key: str, out: BatchOutput) -> None:
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


def process_plate(plate: PlateInput, settings: Mapping[str, Any]) -> BatchOutput:
    """One plate's tables — files, wells, lysis, qc; fits, potency, lots_differ — and report section."""
    tables = ingest_batch([plate], settings)
    tables.update(analyse_batch(tables["wells"], tables["qc"], settings))
    return BatchOutput(tables, plate_sections(tables, settings))


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
    return BatchOutput(tables, "".join(o.plates_html for o in outs))
