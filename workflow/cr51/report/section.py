"""What a batch job hands the collect job for the report: plate sections as plain data.

A :class:`Section` is one plate's rendered HTML section with the facts the whole-run page needs
about it (its lots, its figures), so that nothing downstream reads them back out of the HTML.
Every field is ``str``, ``int``, ``float`` or a tuple of these (or of :class:`Figure`), and
:meth:`Section.to_dict` / :meth:`Section.from_dict` round-trip through JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..figures import CurvePoints, JointCurve, curves_svg

#: A joint-fit curve as plain data: the fields of :class:`cr51.figures.JointCurve`, in order
#: (lot, slope, bottom, top, f, e).
CurveRow = tuple[str, float, float, float, float, float]


def _tuples(value: Any) -> Any:
    """Lists (as JSON gives them back) as tuples, nested ones too."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Figure:
    """A plate's suppression-curves figure, kept as the inputs it is drawn from.

    The same inputs draw the inline figure of the plate section (lots coloured by class, the
    page's stylesheet sets the colours) and, in the collect job, where the colours of all the
    run's lots are known, the standalone file ``figures/plates/<plate>.svg`` (fixed colours).

    Attributes
    ----------
    name
        What the figure shows (``"curves"``).
    title
        The figure's accessible title.
    reference
        The plate's reference lot.
    et_ratio
        The E:T ratio of the wells drawn (NaN when the plate has none).
    lots, conc, lysis
        One entry per well entering the fits: its lot (``""`` for untreated), IVIG mg/mL, % lysis.
    curves
        The joint parallel fit's curve per lot (:data:`CurveRow`), reference first; empty without a joint fit.
    """

    name: str
    title: str
    reference: str
    et_ratio: float
    lots: tuple[str, ...]
    conc: tuple[float, ...]
    lysis: tuple[float, ...]
    curves: tuple[CurveRow, ...]

    @classmethod
    def curves_of(cls, points: CurvePoints, curves: Sequence[JointCurve], reference: str, title: str) -> Figure:
        """The curves figure of a plate, from the inputs of :func:`cr51.figures.curves_svg`."""
        return cls(
            "curves",
            title,
            reference,
            float(points.et_ratio),
            tuple(str(v) for v in points.lot.tolist()),
            tuple(float(v) for v in points.conc.tolist()),
            tuple(float(v) for v in points.lysis.tolist()),
            tuple((c.lot, c.slope, c.bottom, c.top, c.f, c.e) for c in curves),
        )

    def svg(self, colours: Mapping[str, str] | None = None) -> str:
        """The figure as SVG.

        Parameters
        ----------
        colours
            ``None``: inline (for the HTML page); {lot: colour} of the run: standalone (for a file).
        """
        points = CurvePoints(
            np.array(self.lots, dtype=str),
            np.array(self.conc, dtype=float),
            np.array(self.lysis, dtype=float),
            self.et_ratio,
        )
        curves = [JointCurve(*c) for c in self.curves]
        return curves_svg(points, curves, self.reference, self.title, colours)

    def to_dict(self) -> dict[str, Any]:
        """The figure as JSON-ready data (tuples as they are; JSON makes them lists)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Figure:
        """The figure :meth:`to_dict` gave, also after a trip through JSON."""
        return cls(**{f.name: _tuples(data[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class Section:
    """One plate's section of the report.

    Attributes
    ----------
    plate
        The plate's name.
    lots
        The lots on the plate's map, in name order (their colours are set by the page).
    html
        The section: one ``<details class="plate">`` element, drawn with the inline figures.
    figures
        The figures the collect job writes as files (the curves: ``figures/plates/<plate>.svg``).
    """

    plate: str
    lots: tuple[str, ...]
    html: str
    figures: tuple[Figure, ...] = ()

    def figure(self, name: str) -> Figure | None:
        """The section's figure called ``name`` (None without one)."""
        return next((f for f in self.figures if f.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The section as JSON-ready data."""
        return {
            "plate": self.plate,
            "lots": self.lots,
            "html": self.html,
            "figures": [f.to_dict() for f in self.figures],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Section:
        """The section :meth:`to_dict` gave, also after a trip through JSON."""
        return cls(
            str(data["plate"]),
            _tuples(data["lots"]),
            str(data["html"]),
            tuple(Figure.from_dict(f) for f in data["figures"]),
        )
