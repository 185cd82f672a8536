"""The report's figures as SVG strings: suppression curves, E:T titration, forest plot.

Each figure is drawn in one of two colour modes (:func:`lot_attrs`), from the same inputs:

* inline (``colours=None``), for the HTML report: every lot is drawn with ``class="<lot_class(lot)>"``
  and ``stroke="currentColor"``, and the report's stylesheet gives each class its colour
  (:func:`lot_colours`), so a lot has the same colour in every figure although plates are drawn in
  separate batch jobs, before the run's lots are all known;
* standalone (``colours`` = the run's :func:`lot_colours`), for the SVG files written for slides:
  every lot is drawn with its fixed colour.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import svg
from .fit import curve

#: Okabe–Ito colours (colour-blind safe; yellow left out: unreadable on white), then two extra.
PALETTE = ("#E69F00", "#0072B2", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#882255", "#7F7F7F")
REFERENCE_COLOUR = "#111111"
UNTREATED_COLOUR = "#8a8a8a"


def lot_class(lot: str) -> str:
    """CSS class of a lot: ``l`` + 8 hex digits of its name's sha1 (valid, stable, name-independent)."""
    return "l" + hashlib.sha1(str(lot).encode("utf-8")).hexdigest()[:8]


def lot_colours(lots: Iterable[str], references: Iterable[str]) -> dict[str, str]:
    """One colour per lot: reference lots near-black, the others the palette in name order."""
    refs = set(references)
    others = sorted(set(lots) - refs)
    colours = {lot: REFERENCE_COLOUR for lot in refs}
    colours.update({lot: PALETTE[i % len(PALETTE)] for i, lot in enumerate(others)})
    return colours


def lot_attrs(lot: str, colours: Mapping[str, str] | None = None, fill: bool = False) -> str:
    """The paint attributes of a lot's series.

    Parameters
    ----------
    lot
        The lot's name.
    colours
        ``None`` for an inline figure: the lot's class and ``currentColor`` (the page's stylesheet
        colours the class). Otherwise {lot: colour} for a standalone figure: the lot's fixed colour
        (:data:`REFERENCE_COLOUR` for a lot without one).
    fill
        Fill with the same paint as the stroke.

    Returns
    -------
    str
        ``class="l…" stroke="currentColor"`` inline, `` stroke="#…"`` standalone. The standalone
        attributes keep the class's (empty) slot, a leading space, so that a standalone file is byte for
        byte what the earlier text substitution of classes by colours wrote.
    """
    inline = colours is None
    paint = "currentColor" if inline else colours.get(lot, REFERENCE_COLOUR)
    cls = f'class="{lot_class(lot)}"' if inline else ""
    return f'{cls} stroke="{paint}"' + (f' fill="{paint}"' if fill else "")


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _legend(x: float, y: float, entries: Sequence[tuple[str, str]]) -> str:
    """Legend rows (label, stroke attributes) from (x, y) down."""
    out = []
    for i, (label, attrs) in enumerate(entries):
        yy = y + 16 * i
        out.append(svg.line(x, yy, x + 18, yy, f'{attrs} stroke-width="2.5"'))
        out.append(svg.text(x + 24, yy + 4, _short(label)))
    return "".join(out)


def _y_range(values: np.ndarray) -> tuple[float, float]:
    """A lysis axis from 0 (or below, for negative values) to a round top above the data."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 100.0
    lo = min(0.0, math.floor(finite.min() / 10) * 10)
    hi = max(10.0, math.ceil(finite.max() * 1.05 / 10) * 10)
    return lo, hi


@dataclass(frozen=True)
class JointCurve:
    """The joint parallel fit's curve of one lot (LL.5 parameterisation; f = 1 for LL.4)."""

    lot: str
    slope: float
    bottom: float
    top: float
    f: float
    e: float


@dataclass(frozen=True)
class CurvePoints:
    """The wells of one plate that enter the fits: lot ('' for untreated), IVIG mg/mL, % lysis."""

    lot: npt.NDArray[np.str_]
    conc: npt.NDArray[np.float64]
    lysis: npt.NDArray[np.float64]
    et_ratio: float


def curves_svg(
    points: CurvePoints,
    curves: Sequence[JointCurve],
    reference: str,
    title: str,
    colours: Mapping[str, str] | None = None,
) -> str:
    """Suppression curves: % specific lysis against IVIG mg/mL (log axis, dose 0 on a broken axis).

    Parameters
    ----------
    points
        The plate's wells that enter the fits.
    curves
        The joint parallel fit's curve of each lot (none without a joint fit).
    reference
        The plate's reference lot (drawn first, labelled ``(ref.)``).
    title
        The figure's accessible title.
    colours
        ``None``: inline, lots coloured by class; else {lot: colour}, standalone (:func:`lot_attrs`).
    """
    w, h = 600, 300
    frame = svg.Frame(left=56, top=14, right=420, bottom=h - 46)
    conc, lysis, et_ratio = points.conc, points.lysis, points.et_ratio
    treated = points.lot != ""
    pos = conc[treated & (conc > 0)]
    cmin, cmax = (float(pos.min()), float(pos.max())) if pos.size else (0.01, 10.0)
    x0, x_start = frame.left + 14, frame.left + 44  # dose 0, and where the log axis starts
    xs = svg.Scale(cmin / 10**0.15, cmax * 10**0.15, x_start, frame.right, log=True)
    ys = svg.Scale(*_y_range(lysis), frame.bottom, frame.top)
    out = [svg.svg_open(w, h, title)]
    out.append(svg.y_axis(frame, ys, svg.nice_ticks(ys.lo, ys.hi), "% specific lysis"))
    out.append(svg.x_axis(frame, xs, svg.log_ticks(xs.lo, xs.hi), "IVIG (mg/mL)", start=x_start - 6))
    out.append(svg.line(frame.left, frame.bottom, x0 + 8, frame.bottom))
    out.append(svg.axis_break(x_start - 13, frame.bottom))
    out.append(svg.line(x0, frame.bottom, x0, frame.bottom + 4) + svg.text(x0, frame.bottom + 16, "0", "middle"))
    grid = np.logspace(math.log10(xs.lo), math.log10(xs.hi), 32)
    lots = sorted(set(points.lot[treated].tolist()), key=lambda v: (v != reference, v))
    by_lot = {c.lot: c for c in curves}
    legend: list[tuple[str, str]] = []
    for lot in lots:
        attrs = lot_attrs(lot, colours)
        c = by_lot.get(lot)
        if c is not None and all(math.isfinite(v) for v in (c.slope, c.bottom, c.top, c.f, c.e)):
            y = curve(grid, c.slope, c.bottom, c.top, c.e, c.f)
            out.append(svg.polyline(xs(grid), ys(y), f'{attrs} stroke-width="1.8"'))
        mine = (points.lot == lot) & (conc > 0)
        out.append(svg.dots(xs(conc[mine]), ys(lysis[mine]), 5.5, f'{attrs} opacity="0.85"'))
        legend.append((f"{lot} (ref.)" if lot == reference else lot, attrs))
    if curves:
        top = curves[0].top
        out.append(svg.line(x0 - 8, ys.at(top), x0 + 8, ys.at(top), 'stroke="#555" stroke-dasharray="3 2"'))
    untreated = ~treated
    out.append(svg.dots(np.full(untreated.sum(), x0), ys(lysis[untreated]), 5.5, f'stroke="{UNTREATED_COLOUR}"'))
    legend.append(("untreated (dose 0)", f'stroke="{UNTREATED_COLOUR}"'))
    out.append(_legend(frame.right + 22, frame.top + 8, legend))
    out.append(
        svg.text(frame.right + 22, frame.top + 8 + 16 * len(legend) + 6, f"E:T {et_ratio:g}:1", extra=' fill="#555"')
    )
    out.append("</svg>")
    return "".join(out)


def titration_svg(et: np.ndarray, lysis: np.ndarray, lu_a: float, lu_k: float, title: str) -> str:
    """Untreated E:T titration: per-well % specific lysis and the fit y = A(1 − e^(−k·E:T))."""
    w, h = 330, 300
    frame = svg.Frame(left=56, top=14, right=w - 14, bottom=h - 46)
    fitted = math.isfinite(lu_a) and math.isfinite(lu_k)
    xmax = float(et.max()) * 1.08 if et.size else 50.0
    ys = svg.Scale(*_y_range(np.append(lysis, lu_a if fitted else np.nan)), frame.bottom, frame.top)
    xs = svg.Scale(0.0, xmax, frame.left, frame.right)
    out = [svg.svg_open(w, h, title)]
    out.append(svg.y_axis(frame, ys, svg.nice_ticks(ys.lo, ys.hi), "% specific lysis"))
    out.append(svg.x_axis(frame, xs, svg.nice_ticks(0.0, xmax, 5), "E:T (effectors per target)"))
    if ys.lo <= 20 <= ys.hi:
        y20 = ys.at(20)
        out.append(svg.line(frame.left, y20, frame.right, y20, 'stroke="#999" stroke-dasharray="4 3"'))
        out.append(svg.text(frame.right - 2, y20 - 4, "20 % (LU20)", "end", ' fill="#666"'))
    if fitted:
        grid = np.linspace(0.0, xmax, 25)
        y = lu_a * (1.0 - np.exp(-lu_k * grid))
        out.append(svg.polyline(xs(grid), ys(y), 'stroke="#111" stroke-width="1.8"'))
        label = f"A = {lu_a:.4g} %, k = {lu_k:.4g}"
    else:
        label = "no fit"
    out.append(svg.dots(xs(et), ys(lysis), 5.5, f'stroke="{UNTREATED_COLOUR}"'))
    out.append(svg.text(frame.left + 8, frame.top + 12, label, extra=' fill="#333"'))
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class ForestRow:
    """One estimate of the forest plot: a plate's RP (or the combined RP) with its CI."""

    label: str
    rp: float
    lo: float
    hi: float
    included: bool = True


@dataclass(frozen=True)
class ForestGroup:
    """A lot's block: its plates' estimates and its combined estimate (None without one)."""

    lot: str
    plates: Sequence[ForestRow]
    combined: ForestRow | None
    label: str = ""  # the group's heading (default: the lot)


#: Up to this many plates per lot each get a labelled row; more are overlaid in one band.
FOREST_LABELLED_ROWS = 12


def _forest_range(groups: Sequence[ForestGroup]) -> tuple[float, float]:
    vals = [1.0]
    for g in groups:
        for r in [*g.plates, *([g.combined] if g.combined else [])]:
            vals += [v for v in (r.lo, r.hi, r.rp) if math.isfinite(v) and v > 0]
    lo, hi = max(min(vals), 1 / 64), min(max(vals), 64.0)
    return lo / 1.15, hi * 1.15


def forest_svg(
    groups: Sequence[ForestGroup],
    references: Sequence[str],
    ci_level: float,
    colours: Mapping[str, str] | None = None,
) -> str:
    """Forest plot: per lot, each plate's RP with its CI, then the combined RP (diamond) and CI.

    Parameters
    ----------
    groups
        One block per lot.
    references
        The run's reference lots (RP = 1).
    ci_level
        The confidence level of the intervals (for the column heading).
    colours
        ``None``: inline, lots coloured by class; else {lot: colour}, standalone (:func:`lot_attrs`).
    """
    row_h, w = 15, 780
    heights = [row_h * (len(g.plates) if len(g.plates) <= FOREST_LABELLED_ROWS else 4) + row_h + 30 for g in groups]
    top = 40
    h = top + sum(heights) + 50
    frame = svg.Frame(left=170, top=top, right=590, bottom=h - 46)
    xs = svg.Scale(*_forest_range(groups), frame.left, frame.right, log=True)
    ref_text = ", ".join(references) if references else "the reference lot"
    out = [svg.svg_open(w, h, f"Relative potency per lot and plate vs {ref_text}")]
    out.append(
        svg.x_axis(frame, xs, svg.log_ticks(xs.lo, xs.hi), "Relative potency (IC50 reference / IC50 lot), log scale")
    )
    x1 = xs.at(1.0)
    out.append(svg.line(x1, frame.top - 8, x1, frame.bottom, 'stroke="#444" stroke-dasharray="5 3"'))
    out.append(svg.text(x1, frame.top - 14, f"RP = 1: reference lot {ref_text}", "middle", ' font-weight="600"'))
    out.append(svg.text(frame.right + 12, frame.top - 14, f"RP ({ci_level:.0%} CI)", extra=' font-weight="600"'))
    y = frame.top + 8
    for g, gh in zip(groups, heights):
        out.append(_forest_group(g, xs, frame, y, row_h, colours))
        y += gh
    out.append("</svg>")
    return "".join(out)


def _ci_text(r: ForestRow) -> str:
    return f"{r.rp:.4g} ({r.lo:.4g}–{r.hi:.4g})"


def _clip(xs: svg.Scale, v: float) -> float:
    return xs.at(min(max(v, xs.lo), xs.hi)) if math.isfinite(v) and v > 0 else math.nan


def _forest_group(
    g: ForestGroup, xs: svg.Scale, frame: svg.Frame, y: float, row_h: int, colours: Mapping[str, str] | None
) -> str:
    attrs = lot_attrs(g.lot, colours)
    out = [svg.text(8, y + 4, _short(g.label or g.lot, 24), extra=' font-weight="700"')]
    y += row_h
    labelled = len(g.plates) <= FOREST_LABELLED_ROWS
    for i, r in enumerate(g.plates):
        yy = y + (i * row_h if labelled else (i % 40) * (3 * row_h / 40))
        style = f'{attrs} stroke-width="1.5"' + ("" if r.included else ' stroke-dasharray="2 2" opacity="0.6"')
        if not labelled:
            style += ' opacity="0.35"'
        out.append(svg.line(_clip(xs, r.lo), yy, _clip(xs, r.hi), yy, style))
        out.append(svg.dots([_clip(xs, r.rp)], [yy], 5, style))
        if labelled:
            out.append(
                svg.text(
                    20, yy + 4, _short(r.label, 22) + ("" if r.included else " (not combined)"), extra=' fill="#444"'
                )
            )
            out.append(svg.text(frame.right + 12, yy + 4, _ci_text(r), extra=' fill="#444"'))
    y += (len(g.plates) if labelled else 4) * row_h
    if not labelled:
        out.append(svg.text(20, y - 2 * row_h + 4, f"{len(g.plates)} plates (overlaid)", extra=' fill="#444"'))
    c = g.combined
    if c is not None and math.isfinite(c.rp):
        lo, mid, hi = _clip(xs, c.lo), _clip(xs, c.rp), _clip(xs, c.hi)
        pts = f"{svg.num(lo)},{svg.num(y)} {svg.num(mid)},{svg.num(y - 6)} {svg.num(hi)},{svg.num(y)} {svg.num(mid)},{svg.num(y + 6)}"
        fill = lot_attrs(g.lot, colours, fill=True)
        out.append(f'<polygon points="{pts}" {fill} fill-opacity="0.35" stroke-width="1.5"/>')
        out.append(svg.text(20, y + 4, c.label, extra=' font-weight="700"'))
        out.append(svg.text(frame.right + 12, y + 4, _ci_text(c), extra=' font-weight="700"'))
    else:
        out.append(svg.text(20, y + 4, "combined: no valid plates", extra=' fill="#a00"'))
    return "".join(out)


@dataclass(frozen=True)
class TrendSeries:
    """The plates of one monitored quantity's series, in date order, as a Levey–Jennings chart draws them.

    ``days`` are days since 1970-01-01; ``values`` are in the quantity's own scale (ln of it when
    ``log``: the axis is then labelled in the quantity's unit, on a log scale). ``broken`` holds the
    rules each plate breaks (empty when none); ``warning`` marks the plates beyond 2 SD.
    """

    label: str
    days: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    plates: tuple[str, ...]
    broken: tuple[str, ...]
    warning: npt.NDArray[np.bool_]
    mean: float
    sd: float
    provisional: bool
    n_baseline: int
    baseline_end: float | None = None  # the last baseline plate's day, when it is among the drawn plates
    log: bool = False


#: Paint of the Levey–Jennings chart: points in limits, warnings (1-2s), rule breaks, ±2 SD, ±3 SD.
LJ_OK, LJ_WARN, LJ_BROKEN, LJ_2SD, LJ_3SD = "#0072B2", "#E69F00", "#C1121F", "#B07A00", "#C1121F"


def levey_jennings_svg(s: TrendSeries, title: str, desc: str) -> str:
    """Levey–Jennings chart: each plate's value by assay date, the mean, ±2 SD and ±3 SD, broken points marked.

    Parameters
    ----------
    s
        The series (already cut to the plates to draw).
    title, desc
        The figure's accessible title and description (``<title>``, ``<desc>``).

    Returns
    -------
    str
        The SVG: points in limits as one ``lj-ok`` path, warnings (beyond 2 SD, no rule broken) as one
        ``lj-warn`` path, and each plate that breaks a rule as its own ``lj-broken`` mark with a
        ``<title>`` naming the plate and the rules. Provisional limits are drawn dotted and labelled.
    """
    w, h = 720, 250
    frame = svg.Frame(left=64, top=18, right=w - 96, bottom=h - 46)
    shown = (lambda v: np.exp(v)) if s.log else (lambda v: np.asarray(v, float))
    have_sd = math.isfinite(s.sd) and s.sd > 0 and math.isfinite(s.mean)
    span = np.asarray(s.values, float)
    if have_sd:
        span = np.append(span, [s.mean - 3.4 * s.sd, s.mean + 3.4 * s.sd])
    span = span[np.isfinite(span)]
    lo, hi = (float(span.min()), float(span.max())) if span.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if s.log:
        ys = svg.Scale(math.exp(lo), math.exp(hi), frame.bottom, frame.top, log=True)
        ticks = [t for t in svg.nice_ticks(math.exp(lo), math.exp(hi), 4) if t > 0]
    else:
        ys = svg.Scale(lo, hi, frame.bottom, frame.top)
        ticks = svg.nice_ticks(lo, hi, 5)
    days = np.asarray(s.days, float)
    d0, d1 = (float(days.min()), float(days.max())) if days.size else (0.0, 1.0)
    if not d1 > d0:
        d0, d1 = d0 - 1.0, d1 + 1.0
    dpad = 0.03 * (d1 - d0)
    xs = svg.Scale(d0 - dpad, d1 + dpad, frame.left, frame.right)
    out = [svg.svg_open(w, h, title, ' class="lj"'), svg.desc(desc)]
    out.append(svg.y_axis(frame, ys, ticks, s.label))
    out.append(svg.x_axis_labelled(frame, xs, svg.date_ticks(d0, d1), "assay date"))
    if have_sd:
        band_lo, band_hi = ys.at(shown(s.mean - 2 * s.sd)), ys.at(shown(s.mean + 2 * s.sd))
        out.append(svg.rect(frame.left, band_hi, frame.right - frame.left, band_lo - band_hi, 'fill="#eef5ee"'))
        dash = "1 3" if s.provisional else "5 3"
        for k, paint, name in ((3, LJ_3SD, "3 SD"), (2, LJ_2SD, "2 SD")):
            for sign in (1, -1):
                v = s.mean + sign * k * s.sd
                y = ys.at(shown(v))
                out.append(svg.line(frame.left, y, frame.right, y, f'stroke="{paint}" stroke-dasharray="{dash}"'))
                mark = "+" if sign > 0 else "−"
                out.append(
                    svg.text(frame.right + 4, y + 4, f"{mark}{name} {float(shown(v)):.3g}", extra=f' fill="{paint}"')
                )
        y = ys.at(shown(s.mean))
        mean_dash = ' stroke-dasharray="1 3"' if s.provisional else ""
        out.append(svg.line(frame.left, y, frame.right, y, f'stroke="#333" stroke-width="1.4"{mean_dash}'))
        out.append(svg.text(frame.right + 4, y + 4, f"mean {float(shown(s.mean)):.3g}", extra=' fill="#333"'))
    if s.provisional:
        out.append(
            svg.text(frame.left + 6, frame.top + 10, f"provisional limits ({s.n_baseline} plates): no rule evaluated",
                     extra=' fill="#555"')
        )  # fmt: skip
    if s.baseline_end is not None and d0 <= s.baseline_end < d1:
        x = xs.at(s.baseline_end)
        out.append(svg.line(x, frame.top, x, frame.bottom, 'stroke="#777" stroke-dasharray="2 2"'))
        out.append(svg.text(x - 3, frame.top + 10, "baseline", "end", ' fill="#555"'))
    px, py = xs(days), ys(shown(s.values))
    out.append(svg.polyline(px, py, 'stroke="#9aa7b0" stroke-width="0.8"'))
    broken = np.array([b != "" for b in s.broken], bool)
    warn = np.asarray(s.warning, bool) & ~broken
    ok = ~broken & ~warn
    out.append(svg.dots(px[ok], py[ok], 5, f'class="lj-ok" stroke="{LJ_OK}"'))
    out.append(svg.dots(px[warn], py[warn], 6, f'class="lj-warn" stroke="{LJ_WARN}"'))
    for i in np.flatnonzero(broken):
        x, y = svg.num(px[i]), svg.num(py[i])
        out.append(
            f'<g class="lj-broken"><title>{svg.esc(s.plates[i])}: {svg.esc(s.broken[i])}</title>'
            f'<path d="M{x} {y}h0" stroke="{LJ_BROKEN}" stroke-width="8" stroke-linecap="round"/>'
            f'<circle cx="{x}" cy="{y}" r="6.5" fill="none" stroke="{LJ_BROKEN}"/></g>'
        )
    out.append("</svg>")
    return "".join(out)
