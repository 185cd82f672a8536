"""The trends section (collect job): plates breaking a control rule first, then one row per monitored series,
then a Levey–Jennings chart per series (trends.csv, :mod:`cr51.trends`; docs/trends.md).

Small at any history: each chart draws the last ``trends.chart_plates`` plates of its series, the table of
flagged plates lists at most ``listed`` rows (latest first; trends.csv holds them all), and the per-series
table has one row per series. Plate names link to the plate's page (:func:`cr51.report.names.plate_page`,
relative to ``results/``; ``base`` is prepended for a page in a sub-folder).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..figures import TrendSeries, levey_jennings_svg
from ..settings import Trends
from ..trends import QUANTITIES, flagged_plates
from .html import esc, fmt, table, td, truthy
from .names import plate_page

#: At most this many flagged plate × quantity rows are listed (latest first).
LISTED_ROWS = 200


def quantity_text(quantity: str) -> str:
    """The quantity in words with its unit (``reference lot ln IC50 (mg/mL)``, ``untreated lysis (% lysis)``)."""
    q = QUANTITIES.get(quantity)
    if q is None:
        return quantity
    if q.log:
        return f"{q.label.replace('IC50', 'ln IC50')} (ln {q.unit})"
    return f"{q.label} ({q.unit})" if q.unit else q.label


def _series_text(quantity: str, series: str) -> str:
    return quantity_text(quantity) + (f", reference lot {series}" if series else "")


def _link(plate: str, base: str) -> str:
    return f'<a href="{esc(base + plate_page(plate))}">{esc(plate)}</a>'


def trends_section(trends: pd.DataFrame, cfg: Trends, *, base: str = "", listed: int = LISTED_ROWS) -> str:
    """The ``#trends`` section from trends.csv's rows.

    Parameters
    ----------
    trends
        trends.csv (as :func:`cr51.trends.trends_table` gives it or :func:`cr51.tables.read_table` reads it).
    cfg
        ``trends:`` settings (the rules named in the text, the baseline size, the plates drawn per chart).
    base
        Prefix of the links to plate pages (``""`` for a page in ``results/``, ``"../"`` one folder down).
    listed
        At most this many flagged rows are listed.
    """
    rules = ", ".join(cfg.rules) or "none"
    parts = [
        '<section id="trends"><h2>Trends and control rules</h2>'
        "<p>Assay monitoring (USP &lt;1032&gt;): per quantity and assay date, every plate that passed QC, with the "
        f"mean and ±2/±3 SD of the quantity's first {cfg.baseline_plates} plates (the baseline; a baseline plate "
        "beyond 3 SD leaves it). Westgard rules (Westgard et al., <i>Clin. Chem.</i> 1981; 27:493) are evaluated in "
        f"date order once a quantity has its full baseline: <b>{esc(rules)}</b>; beyond 2 SD is a warning (1-2s). "
        "A flagged plate is not failed: it asks for a look at the run. Method: docs/trends.md; every value: "
        f'<a href="{esc(base)}trends.csv">trends.csv</a>.</p>'
    ]
    if trends.empty:
        parts.append(
            '<p class="muted">No plate with an assay date has passed QC yet: nothing to monitor.</p></section>'
        )
        return "".join(parts)
    t = trends.assign(rule=trends["rule"].fillna("").astype(str), series=trends["series"].fillna("").astype(str))
    parts.append(_flagged_block(t, base, listed))
    parts.append(_series_table(t))
    parts.append(_charts(t, cfg))
    parts.append("</section>")
    return "".join(parts)


def _flagged_block(t: pd.DataFrame, base: str, listed: int) -> str:
    flagged = flagged_plates(t)
    n_plates = flagged["plate"].nunique()
    if flagged.empty:
        fixed = (t["limits"] == "fixed").any()
        why = "" if fixed else " (no quantity has its full baseline yet: limits are provisional, no rule is evaluated)"
        return f'<h3>Plates breaking a control rule</h3><p class="ok">No plate breaks a control rule{why}.</p>'
    rows = [
        f'<tr data-plate="{esc(r["plate"])}" data-quantity="{esc(r["quantity"])}"><td>{_link(str(r["plate"]), base)}</td>'
        f"<td>{esc(r['date'])}</td><td>{esc(_series_text(r['quantity'], r['series']))}</td>"
        f"{td(r['value'], 'value')}{td(r['mean'], 'mean')}{td(r['sd'], 'sd')}{td(r['z'], 'z')}"
        f'<td class="bad" data-c="rule">{esc(r["rule"])}</td></tr>'
        for r in flagged.head(listed).to_dict("records")
    ]
    more = len(flagged) - len(rows)
    note = f'<p class="muted">{more} more flagged values (older) in trends.csv.</p>' if more > 0 else ""
    headers = ["plate", "date", "quantity", "value", "mean", "SD", "z", "rules broken"]
    latest = flagged.iloc[0]
    opened = " open" if len(rows) <= 25 else ""
    return (
        f"<h3>Plates breaking a control rule</h3><details{opened}><summary>{n_plates} plate(s), {len(flagged)} "
        f"value(s); the latest {esc(latest['date'])} ({_link(str(latest['plate']), base)}: "
        f"{esc(_series_text(latest['quantity'], latest['series']))}, {esc(latest['rule'])}); latest first</summary>"
        + table(headers, rows, ' data-table="trends_flagged"')
        + note
        + "</details>"
    )


def _series_table(t: pd.DataFrame) -> str:
    rows = []
    for (quantity, series), g in _groups(t):
        last = g.iloc[-1]
        n_flagged = int((g["rule"] != "").sum())
        n_warn = int((g["warning"].fillna("").astype(str) != "").sum())
        rows.append(
            f'<tr data-quantity="{esc(quantity)}" data-series="{esc(series)}"><td>{esc(quantity_text(quantity))}</td>'
            f"<td>{esc(series) or 'all'}</td>{td(len(g), 'plates')}{td(last['n_baseline'], 'n_baseline')}"
            f"{td(last['mean'], 'mean')}{td(last['sd'], 'sd')}<td>{esc(last['limits'])}</td>"
            f"{td(n_flagged, 'flagged', 'bad' if n_flagged else '')}{td(n_warn, 'warnings')}</tr>"
        )
    headers = ["quantity", "reference lot", "plates", "baseline plates", "mean", "SD", "limits", "flagged", "1-2s"]
    return "<h3>Monitored quantities</h3>" + table(headers, rows, ' data-table="trends_series"')


def _groups(t: pd.DataFrame):
    """(quantity, series) groups in trends.csv's order (quantities as :data:`QUANTITIES` lists them)."""
    order = {name: i for i, name in enumerate(QUANTITIES)}
    grouped = dict(iter(t.groupby(["quantity", "series"], sort=False)))  # one split (not .groups, then get_group)
    return [(k, grouped[k]) for k in sorted(grouped, key=lambda k: (order.get(k[0], 99), k))]


def _charts(t: pd.DataFrame, cfg: Trends) -> str:
    out = ["<h3>Levey–Jennings charts</h3>"]
    for (quantity, series), g in _groups(t):
        q = QUANTITIES.get(quantity)
        drawn = g.tail(cfg.chart_plates)
        days = pd.to_datetime(drawn["date"], format="ISO8601").to_numpy("datetime64[D]").astype(np.int64).astype(float)
        in_base = drawn["baseline"].map(truthy).to_numpy(bool)
        base_all = g["baseline"].map(truthy).to_numpy(bool)
        last_base = g["date"].to_numpy()[np.flatnonzero(base_all)[-1]] if base_all.any() else None
        base_end = (
            float(np.datetime64(str(last_base), "D").astype(np.int64))
            if last_base is not None and in_base.any() and not in_base.all()
            else None
        )
        first = drawn.iloc[0]
        provisional = str(first["limits"]) != "fixed"
        label = (
            (q.label + (f" ({q.unit}, log scale)" if q.log else f" ({q.unit})" if q.unit else "")) if q else quantity
        )
        s = TrendSeries(
            label=label,
            days=days,
            values=drawn["value"].to_numpy(float),
            plates=tuple(drawn["plate"].astype(str)),
            broken=tuple(drawn["rule"]),
            warning=(drawn["warning"].fillna("").astype(str) != "").to_numpy(bool),
            mean=float(first["mean"]),
            sd=float(first["sd"]),
            provisional=provisional,
            n_baseline=int(first["n_baseline"]),
            baseline_end=base_end,
            log=bool(q and q.log),
        )
        n_broken = int((drawn["rule"] != "").sum())
        what = _series_text(quantity, series)
        cut = f"the last {len(drawn)} of {len(g)} plates" if len(drawn) < len(g) else f"{len(g)} plates"
        limits = "provisional limits, no rule evaluated" if provisional else "fixed limits"
        desc = (
            f"{what}: {cut}, {drawn['date'].iloc[0]} to {drawn['date'].iloc[-1]}; mean {fmt(s.mean)}, SD {fmt(s.sd)} "
            f"from {s.n_baseline} baseline plates ({limits}); {n_broken} drawn plate(s) break a rule."
        )
        svg = levey_jennings_svg(s, f"Levey–Jennings chart: {what}", desc)
        out.append(
            f'<figure class="trend" data-quantity="{esc(quantity)}" data-series="{esc(series)}">{svg}'
            f"<figcaption>{esc(desc)}</figcaption></figure>"
        )
    return "".join(out)
