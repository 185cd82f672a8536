"""Hand-written SVG for the report's figures: scales, axes, ticks, lines, dots, text.

Figures are built as strings (no matplotlib: a figure costs well under a millisecond here, and
the report draws several per plate). Coordinates are rounded to 0.1 px to keep files small.
Colours are either CSS colours or ``currentColor`` with a class (see :func:`cr51.figures.lot_attrs`),
so the HTML report can set one colour per lot in its stylesheet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import numpy.typing as npt

FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"


def esc(text: object) -> str:
    """Text escaped for an SVG/HTML text node or attribute value."""
    return escape(str(text), quote=True)


def num(v: float) -> str:
    """A coordinate with at most one decimal, without a trailing ``.0``."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


@dataclass(frozen=True)
class Scale:
    """Maps data values on [lo, hi] (log10 of them when ``log``) onto pixels [p0, p1]."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False

    def __call__(self, v: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Pixel positions of data values (vectorised)."""
        x = np.asarray(v, dtype=float)
        if self.log:
            x = np.log10(x)
        lo, hi = (math.log10(self.lo), math.log10(self.hi)) if self.log else (self.lo, self.hi)
        return self.p0 + (x - lo) / (hi - lo) * (self.p1 - self.p0)

    def at(self, v: float) -> float:
        """Pixel position of one value."""
        return float(self(v))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values 1, 3 × 10^k (or powers of ten only over more than three decades) in [lo, hi]."""
    ticks = []
    mantissas = (1.0,) if math.log10(hi / lo) > 3 else (1.0, 3.0)
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        values = (float(f"{m * 10.0**k:.12g}") for m in mantissas)
        ticks += [v for v in values if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    return ticks


def tick_label(v: float) -> str:
    """Short tick text: 0.03, 0.1, 1, 10, 1e+04."""
    return f"{v:g}"


def svg_open(width: int, height: int, title: str, attrs: str = "") -> str:
    """Opening ``<svg>`` tag with a viewBox (scales with the page) and an accessible title."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" style="{FONT};font-size:11px"{attrs}><title>{esc(title)}</title>'
    )


def text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    """A text label at (x, y); ``anchor`` is start, middle or end."""
    a = "" if anchor == "start" else f' text-anchor="{anchor}"'
    return f'<text x="{num(x)}" y="{num(y)}"{a}{extra}>{esc(s)}</text>'


def line(x1: float, y1: float, x2: float, y2: float, attrs: str = 'stroke="#222"') -> str:
    """A straight line."""
    return f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" {attrs}/>'


def rect(x: float, y: float, w: float, h: float, attrs: str) -> str:
    """A rectangle."""
    return f'<rect x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" {attrs}/>'


def _floats(values: Iterable[float] | np.ndarray) -> list[float]:
    """Coordinates as Python floats (an array's by one ``tolist``: formatting and testing numpy
    scalars one by one costs several times more, for the same text)."""
    return np.asarray(values, dtype=float).tolist() if isinstance(values, np.ndarray) else list(values)


def path_points(xs: Iterable[float], ys: Iterable[float]) -> str:
    """``x,y x,y …`` for a polyline."""
    return " ".join(f"{num(x)},{num(y)}" for x, y in zip(_floats(xs), _floats(ys)))


def polyline(xs: Sequence[float], ys: Sequence[float], attrs: str) -> str:
    """An open polyline through the points (NaN points are dropped)."""
    pts = [(x, y) for x, y in zip(_floats(xs), _floats(ys)) if math.isfinite(x) and math.isfinite(y)]
    return f'<polyline fill="none" points="{path_points(*zip(*pts))}" {attrs}/>' if pts else ""


def dots(xs: Sequence[float], ys: Sequence[float], size: float, attrs: str) -> str:
    """Round dots of diameter ``size`` as one path (zero-length segments with round caps: small files)."""
    d = "".join(
        f"M{num(x)} {num(y)}h0" for x, y in zip(_floats(xs), _floats(ys)) if math.isfinite(x) and math.isfinite(y)
    )
    return f'<path d="{d}" stroke-width="{size}" stroke-linecap="round" {attrs}/>' if d else ""


@dataclass(frozen=True)
class Frame:
    """The plotting area of a figure, in pixels."""

    left: float
    top: float
    right: float
    bottom: float


def y_axis(frame: Frame, ys: Scale, ticks: Sequence[float], label: str) -> str:
    """Left axis with ticks, light horizontal grid lines and a rotated label."""
    out = [line(frame.left, frame.top, frame.left, frame.bottom)]
    for t in ticks:
        y = ys.at(t)
        out.append(line(frame.left, y, frame.right, y, 'stroke="#e4e4e4"'))
        out.append(line(frame.left - 4, y, frame.left, y))
        out.append(text(frame.left - 6, y + 4, tick_label(t), "end"))
    mid = (frame.top + frame.bottom) / 2
    out.append(
        f'<text transform="translate({num(frame.left - 38)},{num(mid)}) rotate(-90)" '
        f'text-anchor="middle">{esc(label)}</text>'
    )
    return "".join(out)


def x_axis(frame: Frame, xs: Scale, ticks: Sequence[float], label: str, start: float | None = None) -> str:
    """Bottom axis (from ``start`` px, default the frame's left) with ticks and a centred label."""
    x0 = frame.left if start is None else start
    out = [line(x0, frame.bottom, frame.right, frame.bottom)]
    for t in ticks:
        x = xs.at(t)
        out.append(line(x, frame.bottom, x, frame.bottom + 4))
        out.append(text(x, frame.bottom + 16, tick_label(t), "middle"))
    out.append(text((x0 + frame.right) / 2, frame.bottom + 32, label, "middle"))
    return "".join(out)


def axis_break(x: float, y: float) -> str:
    """The ``//`` mark of a broken axis at (x, y)."""
    return "".join(line(x + dx - 3, y + 5, x + dx + 3, y - 5) for dx in (-2.5, 2.5))


def desc(s: str) -> str:
    """An accessible description (``<desc>``), placed right after the ``<title>`` of :func:`svg_open`."""
    return f"<desc>{esc(s)}</desc>"


def x_axis_labelled(frame: Frame, xs: Scale, ticks: Sequence[tuple[float, str]], label: str) -> str:
    """Bottom axis with ticks at data values and the given texts (dates, categories) and a centred label."""
    out = [line(frame.left, frame.bottom, frame.right, frame.bottom)]
    for t, s in ticks:
        x = xs.at(t)
        out.append(line(x, frame.bottom, x, frame.bottom + 4))
        out.append(text(x, frame.bottom + 16, s, "middle"))
    out.append(text((frame.left + frame.right) / 2, frame.bottom + 32, label, "middle"))
    return "".join(out)


def date_ticks(lo: float, hi: float, n: int = 6) -> list[tuple[float, str]]:
    """About ``n`` date ticks over days since 1970-01-01 [lo, hi]: (day, text).

    Whole years (``2026``) over more than three years, first days of months (``2026-04``) over more than
    two months, otherwise days (``2026-04-23``) at a round step of days.
    """
    lo_d, hi_d = np.datetime64(int(math.floor(lo)), "D"), np.datetime64(int(math.ceil(hi)), "D")
    span = hi - lo
    if span > 3 * 365:
        years = np.arange(lo_d.astype("datetime64[Y]"), hi_d.astype("datetime64[Y]") + 1)
        step = max(1, math.ceil(len(years) / n))
        marks = [(y.astype("datetime64[D]"), str(y)) for y in years[::step]]
    elif span > 60:
        months = np.arange(lo_d.astype("datetime64[M]"), hi_d.astype("datetime64[M]") + 1)
        step = next(s for s in (1, 2, 3, 6, 12) if len(months) / s <= n)
        marks = [(m.astype("datetime64[D]"), str(m)) for m in months if m.astype(int) % step == 0]
    else:
        step = next(s for s in (1, 2, 5, 7, 14, 28) if span / s <= n)
        first = math.ceil(lo / step) * step
        marks = [(np.datetime64(int(d), "D"), "") for d in range(first, int(hi) + 1, step)]
        marks = [(d, str(d)) for d, _ in marks]
    return [(float(d.astype(int)), s) for d, s in marks if lo <= d.astype(int) <= hi]
