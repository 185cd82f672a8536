"""The HTML report a lab reads: ``results/report.html`` (one self-contained file) and SVG figures.

Two stages, so that an unchanged plate is not drawn again:

* :func:`plate_sections` (:mod:`.plate`) and :func:`plate_page` (:mod:`.plate_page`) — inside each
  batch job: one section per accepted plate, a plain-data :class:`Section` (:mod:`.section`), and the
  plate's page around it (``results/plates/<name>.html``), kept in the plate cache;
* :func:`build_report` (:mod:`.page`) — the collect job: the index page ``report.html`` that links
  to the plate pages, and the forest figure written beside it (:func:`write_report`).

Page and figure file names come from :mod:`.names`.

:mod:`.html` holds the building blocks (:func:`fmt`, :func:`esc`, :func:`td`, :func:`table`, :func:`plate_id`).
"""

from .html import esc, fmt, plate_id, table, td
from .page import Report, ReportInputs, build_report, document, write_report
from .plate import Limits, plate_sections
from .section import Figure, Section

__all__ = [
    "Figure",
    "Limits",
    "Report",
    "ReportInputs",
    "Section",
    "build_report",
    "document",
    "esc",
    "fmt",
    "plate_id",
    "plate_sections",
    "table",
    "td",
    "write_report",
]
