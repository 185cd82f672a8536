"""The HTML report a lab reads: ``results/report.html`` (one self-contained file) and SVG figures.

Two stages, so that an unchanged plate is not drawn again:

* :func:`plate_sections` (:mod:`.plate`) — inside each batch job: one collapsed section per
  accepted plate, a plain-data :class:`Section` (:mod:`.section`) kept per plate in the batch output;
* :func:`build_report` (:mod:`.page`) — the collect job: the whole-run page around the plate
  sections, and the figures written beside it (:func:`write_report`).

:mod:`.html` holds the building blocks (:func:`fmt`, :func:`esc`, :func:`td`, :func:`table`, :func:`plate_id`).
"""

from .html import esc, fmt, plate_id, table, td
from .page import Report, ReportInputs, build_report, safe_name, write_report
from .plate import Limits, plate_sections
from .section import Figure, Section

__all__ = [
    "Figure",
    "Limits",
    "Report",
    "ReportInputs",
    "Section",
    "build_report",
    "esc",
    "fmt",
    "plate_id",
    "plate_sections",
    "safe_name",
    "table",
    "td",
    "write_report",
]
