"""One page per accepted plate: ``results/plates/<name>.html`` (plate map, QC against its limits, curves,
E:T titration, potency rows, its files and their sha256), and its curves as a standalone SVG file
``results/figures/plates/<name>.svg`` (for slides). Drawn inside the plate's batch job.

A page depends only on the plate's own results, its archived version, the analysis settings and the
software, which are all in the plate-cache key: an unchanged plate's page has the same bytes, and
the batch job leaves the file (and its mtime) alone. The page says nothing about the run that wrote
it (no time stamp, no drop-folder status); links go to the index (``../report.html``) and the pages of its lots with potency rows
(``../lots/<name>.html``, written by the collect job), all inside ``results/``.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from .. import __version__
from ..digests import software_digest
from ..figures import lot_class, lot_colours
from ..settings import Analysis
from ..tables import records
from .html import esc, table, td
from .html import missing as _missing
from .names import file_stem, lot_page
from .page import document
from .section import Section


def plate_files(plate: str) -> tuple[str, str]:
    """The plate's page and curves figure, relative to ``results/``."""
    stem = file_stem(plate)
    return f"plates/{stem}.html", f"figures/plates/{stem}.svg"


def _reference(qc: pd.DataFrame, plate: str) -> str:
    """The reference lot of the first qc.csv row of ``plate`` ("" without a row or a reference lot)."""
    ref = next((r for p, r in zip(qc["plate"].tolist(), qc["reference_lot"].tolist()) if str(p) == plate), None)
    return "" if _missing(ref) else str(ref)


def plate_figures(section: Section, qc: pd.DataFrame) -> dict[str, str]:
    """{path: svg} of the plate's standalone figure (fixed colours: the reference near-black, the other
    lots the palette in name order)."""
    curves = section.figure("curves")
    if curves is None:
        return {}
    ref = _reference(qc, section.plate)
    colours = lot_colours(set(section.lots) | ({ref} if ref else set()), [ref] if ref else [])
    return {plate_files(section.plate)[1]: curves.svg(colours)}


def plate_page(
    section: Section, qc: pd.DataFrame, potency: pd.DataFrame, files: pd.DataFrame, version: int, settings: Analysis
) -> str:
    """The plate's page.

    Parameters
    ----------
    section
        The plate's section (:func:`cr51.report.plate_sections`).
    qc
        The plate's qc.csv row (its reference lot colours the figures).
    potency
        The plate's potency.csv rows: its lots with a row, and its reference lot, have a lot page (linked).
    files
        The plate's files.csv rows as processed (layout, export: their sha256 and size).
    version
        The archived version its results are from (0: files straight from a folder).
    settings
        The analysis settings (their digest is printed, for tracing).
    """
    plate = section.plate
    ref = _reference(qc, plate)
    colours = lot_colours(set(section.lots) | ({ref} if ref else set()), [ref] if ref else [])
    paged = {str(lot) for lot in potency["lot"].tolist() if not _missing(lot)} | ({ref} if ref else set())  # lot pages

    def lot_link(lot: str) -> str:
        name = f'<a href="../{esc(lot_page(lot))}">{esc(lot)}</a>' if lot in paged else esc(lot)
        return f'<b class="sw {lot_class(lot)}"></b>{name}'

    lots = " ".join(lot_link(lot) for lot in section.lots)
    rows = [
        f"<tr><td><code>{esc(r['file'])}</code></td><td>{esc(r['status'])}</td>{td(r['bytes'], 'bytes')}"
        f"<td><code>{esc(r['sha256'])}</code></td></tr>"
        for r in records(files)
    ]
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()
    body = (
        f'<header><nav><a href="../report.html">← Index</a> · lots: {lots or "–"}</nav>'
        f"<h1>Plate {esc(plate)}</h1>"
        f'<p class="muted">Archived version {esc(version)} · cr51 {esc(__version__)} · software '
        f"<code>{software_digest()[:12]}</code> · analysis settings <code>{digest[:12]}</code></p></header>"
        f"<main>{section.html}"
        f'<section id="files"><h2>Files</h2>{table(["file", "status", "bytes", "sha256"], rows, " data-table=files")}'
        "</section></main>"
    )
    return document(f"Plate {plate} — 51Cr release assay", body, colours)
