"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
LAYOUTS = REPO / "config" / "layouts"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def layouts_dir() -> Path:
    return LAYOUTS
