"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
LAYOUTS = REPO / "config" / "layouts"

#: The settings a batch job gets (cr51.batch.process_batch), with the shipped defaults.
BATCH_SETTINGS = {
    "layouts_dir": str(LAYOUTS),
    "max_export_bytes": 20_000_000,
    "qc": {},
    "outliers": {"rule": "dixon_q", "exclude": False},
    "fit": {"models": ["LL.4"], "et_ratio": None},
    "potency": {},
}


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def layouts_dir() -> Path:
    return LAYOUTS
