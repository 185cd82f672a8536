"""The HTML report a lab reads: ``results/report.html`` (one self-contained file) and SVG figures.

Two stages, so that an unchanged plate is not drawn again:

* :func:`plate_sections` (:mod:`.plate`) and :func:`plate_page` (:mod:`.plate_page`) — inside each
  batch job: one section per accepted plate, a plain-data :class:`Section` (:mod:`.section`), and the
  plate's page around it (``results/plates/<name>.html``), kept in the plate cache;
* :func:`build_report` (:mod:`.page`) — the collect job: the index page ``report.html`` that links
  to the plate pages, and the forest figure written beside it (:func:`write_report`).

Page and figure file names come from :mod:`.names`.

Pages and the workbook the collect job writes beside the report (issue 17; docs/report.md):
:func:`build_lot_pages` (:mod:`.lot_page`, ``lots/<name>.html``), :func:`build_campaign_pages`
(:mod:`.campaign_page`, ``campaigns/<name>.html``), both written by :func:`write_pages`, and
:func:`write_workbook` (:mod:`.workbook`, ``results.xlsx``); imported when first used.

:mod:`.html` holds the building blocks (:func:`fmt`, :func:`esc`, :func:`td`, :func:`table`, :func:`plate_id`).
"""

from importlib import import_module
from typing import Any

from .html import esc, fmt, plate_id, table, td
from .page import Report, ReportInputs, build_report, document, write_report
from .plate import Limits, plate_sections
from .section import Figure, Section

#: Exports imported when first used (PEP 562): the collect job's pages and workbook pull in the campaign
#: statistics and openpyxl, which the batch jobs (``plate_sections``) do not pay for.
_LAZY = {
    "build_campaign_page": "campaign_page",
    "build_campaign_pages": "campaign_page",
    "build_lot_page": "lot_page",
    "build_lot_pages": "lot_page",
    "write_pages": "lot_page",
    "write_workbook": "workbook",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Figure",
    "Limits",
    "Report",
    "ReportInputs",
    "Section",
    "build_campaign_page",
    "build_campaign_pages",
    "build_lot_page",
    "build_lot_pages",
    "build_report",
    "document",
    "esc",
    "fmt",
    "plate_id",
    "plate_sections",
    "table",
    "td",
    "write_pages",
    "write_report",
    "write_workbook",
]
