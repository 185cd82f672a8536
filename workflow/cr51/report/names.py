"""File names for the pages and figures of plates, lots and campaigns: one place, never colliding.

A name is a readable slug of the id (letters, digits, ``._-``; anything else becomes ``_``, at most 60
characters) followed by ``-`` and the first 10 hex digits of the sha256 of the id's UTF-8 text (NFC), so
that ``run#1`` and ``run_1`` — one slug — get different files, and the same id always the same file.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_stem(name: str) -> str:
    """``<slug>-<10 hex digits>`` for the id ``name`` (a plate, lot or campaign)."""
    text = unicodedata.normalize("NFC", str(name))
    slug = _UNSAFE.sub("_", text)[:60].lstrip(".") or "_"
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug}-{digest}"


def plate_page(plate: str) -> str:
    """The plate's page, relative to ``results/``."""
    return f"plates/{file_stem(plate)}.html"


def lot_page(lot: str) -> str:
    """The lot's page, relative to ``results/``."""
    return f"lots/{file_stem(lot)}.html"


def campaign_page(campaign: str) -> str:
    """The campaign's page, relative to ``results/``."""
    return f"campaigns/{file_stem(campaign)}.html"
