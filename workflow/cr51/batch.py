"""One batch job: every plate of the batch from raw files to potency and its report sections, in one process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .analysis import analyse_batch
from .plate import PlateInput, ingest_batch
from .report import plate_sections


@dataclass(frozen=True)
class BatchOutput:
    """What a batch job writes: its tables and its plates' report sections (``plates.html``)."""

    tables: dict[str, pd.DataFrame]
    plates_html: str


def process_batch(plates: list[PlateInput], settings: Mapping[str, Any]) -> BatchOutput:
    """The batch's tables — files, wells, lysis, qc (ingest); fits, potency, lots_differ — and plate sections."""
    tables = ingest_batch(plates, settings)
    tables.update(analyse_batch(tables["wells"], tables["qc"], settings))
    return BatchOutput(tables, plate_sections(tables, settings))
