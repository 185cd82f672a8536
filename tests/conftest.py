"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from cr51.settings import Analysis, with_defaults

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
LAYOUTS = REPO / "config" / "layouts"

#: A whole configuration as Snakemake hands it to the jobs: the schema's defaults, the shipped templates.
CONFIG = with_defaults({"raw_dir": "raw", "layouts_dir": str(LAYOUTS)})
#: The settings a batch job gets (cr51.batch.process_batch).
BATCH_SETTINGS = Analysis.from_config(CONFIG)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def layouts_dir() -> Path:
    return LAYOUTS
