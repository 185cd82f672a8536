"""Shared fixtures."""

from __future__ import annotations

from cr51.jobs import pin_threads

pin_threads()  # one BLAS thread, as in every job, set before numpy loads: threaded sums differ in the last digit

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cr51.settings import Analysis, with_defaults  # noqa: E402

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
