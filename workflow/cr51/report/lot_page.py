"""One page per lot, ``results/lots/<name>.html``: the lot's potency record (collect job).

A standalone document (the report's stylesheet and script inline, no network) built from the result
tables: the lot's product; its combined potency (Ph. Eur. 5.3, per reference lot) and campaign potency
(fixed plate blocks, per campaign); then per campaign — plates of different campaigns (reference lot and
study) never share an axis — a forest plot (every plate's RP with its CI, the combined and the campaign
estimate), the lot over time (RP against assay date) and the plates' table (date, donor, QC, RP and CI,
parallelism, equivalence, whether combined and why not); and the superseded numbers of re-exported plates
(``plate_history.csv``). It links to each plate's page, each campaign's page and ``../report.html``; file
names come from :mod:`cr51.report.names`.

The page prints as the lot's potency record (A4; ``body.record`` rules in ``style.css`` and an
``@page`` header with the lot and the date). Its size is bounded whatever the history: each campaign's
table lists the :data:`PLATE_ROWS` most recent plates and summarises older ones per year, the forest
plot draws the :data:`FOREST_PLATES` most recent plates (more than 12 overlaid in one band), the time plot drops the CI whiskers above
:data:`WHISKER_POINTS` plates, and :data:`HISTORY_ROWS` superseded rows at most are listed; every
number is in the CSVs.

:func:`build_lot_pages` makes every lot's page; :func:`write_pages` writes pages of this module and of
:mod:`cr51.report.campaign_page`. :func:`document` is the standalone shell both use.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__, svg
from ..campaign import campaign_id
from ..figures import REFERENCE_COLOUR, ForestGroup, ForestRow, forest_svg, lot_class, lot_colours
from ..settings import Analysis
from ..tables import records, write_if_changed
from . import names, page
from .html import esc, fmt, map_distinct, missing, table, td, truthy

#: The report's stylesheet and script (package data of :mod:`cr51.report`), inline in every page.
#: Plates listed per campaign (the most recent; older ones are summarised per year).
PLATE_ROWS = 60
#: Above this many plates in a campaign the time plot shows the RPs without CI whiskers.
WHISKER_POINTS = 200
#: Plates drawn per lot in a forest plot (the most recent; above 12 they are overlaid in one band).
FOREST_PLATES = 100
#: Superseded plate_history rows listed at most (the most recently replaced).
HISTORY_ROWS = 60


# --------------------------------------------------------------------------
# The standalone shell (lot and campaign pages)
# --------------------------------------------------------------------------


def css_string(text: str) -> str:
    """``text`` as a CSS string literal: letters, digits and a few marks as they are, the rest as hex escapes
    (no quote, backslash, ``<`` or newline can end the string or the ``<style>`` element)."""
    keep = set(" .,:;_-/()#·—–")
    return '"' + "".join(c if c.isalnum() or c in keep else f"\\{ord(c):x} " for c in text) + '"'


def document(title: str, body: str, colours: Mapping[str, str], print_left: str, print_right: str) -> str:
    """A standalone page: ``<title>``, the report's CSS and JS inline, lot colours, an A4 print header.

    Parameters
    ----------
    title
        The document title (plain text).
    body
        The body's HTML.
    colours
        {lot: CSS colour} for the lots' classes (:func:`cr51.figures.lot_class`) the inline figures use.
    print_left, print_right
        Plain text of the printed page header's left and right (e.g. the lot, the date).
    """
    page_css = (
        f"@page{{size:A4;margin:16mm 12mm 14mm 12mm;@top-left{{content:{css_string(print_left)}}}"
        f"@top-right{{content:{css_string(print_right)}}}"
        '@bottom-right{content:"page " counter(page) " of " counter(pages)}}'
    )
    return page.document(title, body, colours, extra_css=page_css, body_class="record")


def href(page: str) -> str:
    """A link from a page one folder below ``results/`` to ``page`` (a path relative to ``results/``)."""
    return "../" + page


def page_header(kind: str, title_html: str, meta: str, generated: str) -> str:
    """The top of a page: links back, the heading, one line of facts."""
    return (
        f'<header class="page-head"><nav class="crumbs"><a href="../report.html">Report</a> › {esc(kind)}</nav>'
        f'<h1>{title_html}</h1><p class="muted">{meta} · generated {esc(generated)} · cr51 {esc(__version__)}</p>'
        "</header>"
    )


def write_pages(pages: Mapping[str, str], results_dir: str | os.PathLike) -> list[str]:
    """Write ``{path relative to results/: html}`` atomically; a page whose bytes are unchanged is not
    rewritten (same mtime). Returns the paths written."""
    return [rel for rel, html in pages.items() if write_if_changed(Path(results_dir) / rel, html)]


def now_text() -> str:
    """The current UTC time as pages print it."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------
# The lot page
# --------------------------------------------------------------------------


def _campaign_of(qc: pd.DataFrame) -> dict[str, str]:
    """{plate: campaign} from qc.csv (reference lot and study, :func:`cr51.campaign.campaign_id`)."""
    study = qc["study"] if "study" in qc.columns else pd.Series([None] * len(qc), index=qc.index)
    columns = (qc["plate"].tolist(), qc["reference_lot"].tolist(), study.tolist())
    return {str(p): campaign_id(r, s) for p, r, s in zip(*columns)}


def product_of(lot: str, t: Mapping[str, pd.DataFrame]) -> str:
    """The lot's product (brand) from campaign_lots.csv (or campaign_inputs.csv); empty when none is given."""
    for name in ("campaign_lots", "campaign_inputs"):
        df = t.get(name)
        if df is None or "product" not in df.columns:
            continue
        vals = [str(v) for v in df.loc[df["lot"].astype(str) == lot, "product"] if not missing(v) and str(v)]
        if vals:
            return vals[0]
    return ""


def date_key(d: object) -> tuple[int, str]:
    """Sort key of a date text: ISO dates in order, anything else (or nothing) first."""
    s = "" if missing(d) else str(d)
    return (1, s) if _iso(s) is not None else (0, s)


def _iso(s: str) -> _dt.date | None:
    try:
        return _dt.date.fromisoformat(s[:10]) if len(s) >= 10 else None
    except ValueError:
        return None


def plate_rows(lot: str, t: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The lot's plates: potency.csv rows with qc.csv's date, donor, QC status and campaign and
    potency_combined_inputs.csv's ``included`` and reason; oldest first.

    The potency rows are taken as they are (one ``iloc``, in date order), the added columns are built
    as lists (at 10,000 plates of one lot, a frame from 10,000 row dicts was most of the lot page)."""
    pot = t["potency"]
    pot = pot[pot["lot"].astype(str) == lot]
    if pot.empty:
        return pd.DataFrame()
    qc = t["qc"]
    qc = qc[qc["plate"].isin(set(pot["plate"]))]
    camp = _campaign_of(qc)
    qc_plates = [str(p) for p in qc["plate"].tolist()]
    q_date, q_donor, q_status = (dict(zip(qc_plates, qc[c].tolist())) for c in ("date", "donor", "status"))
    inputs = t.get("potency_combined_inputs")
    inc = {}
    if inputs is not None:
        mine = inputs[inputs["lot"].astype(str) == lot]
        for p, ref, included, why in zip(
            mine["plate"].tolist(), mine["reference_lot"].tolist(), mine["included"].tolist(), mine["reason"].tolist()
        ):
            inc[(str(p), str(ref))] = (truthy(included), why)
    plates = [str(p) for p in pot["plate"].tolist()]
    refs = [str(r) for r in pot["reference_lot"].tolist()]
    out: dict[str, list] = {}
    out["campaign"] = [camp.get(p, campaign_id(ref)) for p, ref in zip(plates, refs)]
    out["date"] = [q_date.get(p) for p in plates]
    out["donor"] = [q_donor.get(p) for p in plates]
    out["qc"] = [q_status.get(p, "–") for p in plates]
    included, whys = [], []
    for p, ref, reason in zip(plates, refs, pot["reason"].tolist()):
        ok, why = inc.get((p, ref), (False, ""))
        if not ok and (missing(why) or not str(why)):
            why = reason  # potency.csv's reason (failed fit, …)
        included.append(ok)
        whys.append("" if ok or missing(why) else str(why))
    out["included"], out["why"] = included, whys
    order = date_order(out["date"], plates)
    rows = pot.iloc[order].reset_index(drop=True)
    return rows.assign(**{c: [v[i] for i in order] for c, v in out.items()})


def date_order(dates: Sequence[object], labels: Sequence[str]) -> list[int]:
    """The positions of ``dates`` in the order of ``(date_key(date), label)``, ties in position order."""
    keys = map_distinct(date_key, dates)
    rank = {k: i for i, k in enumerate(sorted(set(keys)))}
    order = sorted(range(len(labels)), key=labels.__getitem__)  # two stable sorts: by label, then by date
    order.sort(key=[rank[k] for k in keys].__getitem__)
    return order


def _iso_date(d: object) -> _dt.date | None:
    """The ISO date a table value starts with, or None (missing, not a date)."""
    return _iso("" if missing(d) else str(d))


def _estimates(lot: str, t: Mapping[str, pd.DataFrame], ci: str) -> str:
    comb = t.get("potency_combined", pd.DataFrame(columns=["lot"]))
    comb = comb[comb["lot"].astype(str) == lot]
    rows = [
        f'<tr data-lot="{esc(lot)}" data-reference="{esc(r["reference_lot"])}"><td>{esc(r["reference_lot"])}</td>'
        f"{td(r['n_plates'], 'n_plates')}{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}"
        f"{td(r['homogeneity_chi2'], 'homogeneity_chi2')}{td(r['homogeneity_p'], 'homogeneity_p')}"
        f"<td>{esc(r['method'])}</td></tr>"
        for r in records(comb)
    ]
    heads = ["reference lot", "plates", "RP", "CI low", "CI high", "homogeneity χ²", "homogeneity p", "method"]
    out = [
        f"<h3>Combined potency (Ph. Eur. 5.3 §6, {ci} CI)</h3>",
        table(heads, rows, ' data-table="potency_combined"')
        if rows
        else '<p class="muted">No combined potency (no plate entered the combination).</p>',
    ]
    cl = t.get("campaign_lots")
    if cl is not None:
        cl = cl[cl["lot"].astype(str) == lot]
        rows = [
            f'<tr data-lot="{esc(lot)}" data-campaign="{esc(r["campaign"])}">'
            f'<td><a href="{esc(href(names.campaign_page(str(r["campaign"]))))}">{esc(r["campaign"])}</a></td>'
            f"<td>{esc(r['reference_lot'])}</td>{td(r['n_plates'], 'n_plates')}{td(r['rp'], 'rp')}"
            f"{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}<td><b>{esc(r['group'])}</b></td></tr>"
            for r in records(cl)
        ]
        if rows:
            out.append(
                f"<h3>Campaign potency (plates as fixed blocks, {ci} CI)</h3>"
                + table(
                    ["campaign", "reference lot", "plates", "RP", "CI low", "CI high", "letters"],
                    rows,
                    ' data-table="campaign_lots"',
                )
                + '<p class="muted">Letters: lots of the campaign sharing a letter do not differ (Tukey); '
                "the campaign page has the pairwise comparisons.</p>"
            )
    return '<section id="estimates"><h2>Estimates</h2>' + "".join(out) + "</section>"


def _forest(lot: str, camp: str, ref: str, plates: pd.DataFrame, t: Mapping[str, pd.DataFrame], level: float) -> str:
    rows = [
        ForestRow(str(r["plate"]), float(r["rp"]), float(r["rp_lo"]), float(r["rp_hi"]), bool(r["included"]))
        for r in records(plates.tail(FOREST_PLATES))
        if not missing(r["rp"])
    ]
    comb = t.get("potency_combined", pd.DataFrame(columns=["lot", "reference_lot"]))
    comb = comb[(comb["lot"].astype(str) == lot) & (comb["reference_lot"].astype(str) == ref)]
    crow = None
    if not comb.empty and comb["n_plates"].iloc[0] > 0:
        c = comb.iloc[0]
        in_camp = set(plates.loc[plates["included"], "plate"].astype(str))
        n = int(c["n_plates"])
        label = f"Ph. Eur. combined ({n} plates)" if n == len(in_camp) else f"Ph. Eur. combined, all vs {ref} ({n})"
        crow = ForestRow(label, float(c["rp"]), float(c["rp_lo"]), float(c["rp_hi"]))
    groups = [ForestGroup(lot, rows, crow)]
    cl = t.get("campaign_lots")
    if cl is not None:
        mine = cl[(cl["lot"].astype(str) == lot) & (cl["campaign"].astype(str) == camp)]
        if not mine.empty and not missing(mine["rp"].iloc[0]) and not missing(mine["rp_lo"].iloc[0]):
            m = mine.iloc[0]
            groups.append(
                ForestGroup(
                    campaign_label(lot),
                    [],
                    ForestRow(
                        f"campaign, fixed blocks ({int(m['n_plates'])})",
                        float(m["rp"]),
                        float(m["rp_lo"]),
                        float(m["rp_hi"]),
                    ),  # fmt: skip
                )
            )
    return forest_svg(groups, [ref], level)


def campaign_label(lot: str) -> str:
    """The forest block label of a lot's campaign estimate (coloured like the lot)."""
    return f"{lot} · campaign"


def _month_ticks(d0: _dt.date, d1: _dt.date) -> list[_dt.date]:
    months = [(y, m) for y in range(d0.year, d1.year + 1) for m in range(1, 13)]
    firsts = [_dt.date(y, m, 1) for y, m in months if d0 <= _dt.date(y, m, 1) <= d1]
    for step in (1, 2, 3, 6, 12, 24, 60):
        ticks = [d for d in firsts if (d.month - 1) % min(step, 12) == 0 and (step <= 12 or d.year % (step // 12) == 0)]
        if len(ticks) <= 7:
            return ticks or [d0]
    return [d0, d1]


def rp_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log RP axis: 1, 3 × 10^k, or round linear steps when that gives fewer than three."""
    ticks = svg.log_ticks(lo, hi)
    if len(ticks) >= 3:
        return ticks
    return [v for v in svg.nice_ticks(lo, hi, 4) if v > 0] or ticks


def time_svg(lot: str, ref: str, plates: pd.DataFrame, combined: tuple[float, float, float] | None) -> str:
    """The lot's RP against assay date on one campaign's plates (log axis; open dots: not combined).

    Parameters
    ----------
    lot, ref
        The lot and the campaign's reference lot.
    plates
        :func:`plate_rows` of the campaign: ``date, rp, rp_lo, rp_hi, included``.
    combined
        The combined RP and its CI (a line and a band), or None.
    """
    cols = (plates[c].tolist() for c in ("rp", "rp_lo", "rp_hi", "included"))
    pts = [
        (d, float(rp), float(rp_lo), float(rp_hi), bool(inc))
        for d, rp, rp_lo, rp_hi, inc in zip(map_distinct(_iso_date, plates["date"].tolist()), *cols)
        if not missing(rp) and rp > 0 and d
    ]
    w, h = 780, 250
    frame = svg.Frame(left=70, top=24, right=w - 24, bottom=h - 44)
    out = [svg.svg_open(w, h, f"Relative potency of {lot} vs {ref} over assay date")]
    if not pts:
        out.append(svg.text(w / 2, h / 2, "no plate with a date and an RP", "middle", ' fill="#a00"'))
        return "".join(out) + "</svg>"
    whiskers = len(pts) <= WHISKER_POINTS
    vals = (
        [1.0]
        + [p[1] for p in pts]
        + ([v for p in pts for v in p[2:4] if math.isfinite(v) and v > 0] if whiskers else [])
    )
    if combined is not None:
        vals += [v for v in combined if math.isfinite(v) and v > 0]
    lo, hi = max(min(vals), 1 / 64) / 1.15, min(max(vals), 64.0) * 1.15
    ys = svg.Scale(lo, hi, frame.bottom, frame.top, log=True)
    d0, d1 = min(p[0] for p in pts), max(p[0] for p in pts)
    pad = max(3, (d1 - d0).days // 20)
    d0, d1 = d0 - _dt.timedelta(days=pad), d1 + _dt.timedelta(days=pad)
    xs = svg.Scale(d0.toordinal(), d1.toordinal(), frame.left, frame.right)
    out.append(svg.y_axis(frame, ys, rp_ticks(lo, hi), "RP (log scale)"))
    out.append(svg.line(frame.left, frame.bottom, frame.right, frame.bottom))
    for d in _month_ticks(d0, d1):
        x = xs.at(d.toordinal())
        out.append(svg.line(x, frame.bottom, x, frame.bottom + 4))
        out.append(svg.text(x, frame.bottom + 16, d.isoformat()[:7], "middle"))
    out.append(svg.text((frame.left + frame.right) / 2, frame.bottom + 34, "assay date", "middle"))
    y1 = ys.at(1.0)
    out.append(svg.line(frame.left, y1, frame.right, y1, 'stroke="#444" stroke-dasharray="5 3"'))
    out.append(svg.text(frame.right - 4, y1 - 4, f"RP = 1 ({ref})", "end", ' fill="#444"'))
    attrs = f'class="{lot_class(lot)}" stroke="currentColor"'
    if combined is not None and all(math.isfinite(v) and v > 0 for v in combined):
        rp, c_lo, c_hi = (ys.at(min(max(v, lo), hi)) for v in combined)
        out.append(svg.rect(frame.left, c_hi, frame.right - frame.left, c_lo - c_hi,
                            f'class="{lot_class(lot)}" fill="currentColor" fill-opacity="0.12" stroke="none"'))  # fmt: skip
        out.append(svg.line(frame.left, rp, frame.right, rp, f'{attrs} stroke-width="1.5"'))
        out.append(svg.text(frame.left + 6, rp - 4, f"combined {fmt(combined[0])}", extra=' fill="#333"'))
    if whiskers:
        for d, _rp, r_lo, r_hi, _inc in pts:
            if math.isfinite(r_lo) and math.isfinite(r_hi) and r_lo > 0:
                x = xs.at(d.toordinal())
                out.append(svg.line(x, ys.at(max(r_lo, lo)), x, ys.at(min(r_hi, hi)), f'{attrs} stroke-width="1" opacity="0.6"'))  # fmt: skip

    def positions(sel: list[tuple]) -> tuple[list[float], list[float]]:
        """Pixel positions of the points, one vectorised scale each (thousands of points a page)."""
        days = np.array([p[0].toordinal() for p in sel], dtype=float)
        rps = np.array([min(max(p[1], lo), hi) for p in sel], dtype=float)
        return xs(days).tolist(), ys(rps).tolist()

    inc = [p for p in pts if p[4]]
    exc = [p for p in pts if not p[4]]
    size = 6 if whiskers else 4
    out.append(svg.dots(*positions(inc), size, attrs))
    if exc:
        ex, ey = positions(exc)
        out.append(svg.dots(ex, ey, size, 'stroke="#fff"'))
        d = "".join(f'<circle cx="{svg.num(x)}" cy="{svg.num(y)}" r="3"/>' for x, y in zip(ex, ey))
        out.append(f'<g fill="none" {attrs} stroke-width="1.2">{d}</g>')
    return "".join(out) + "</svg>"


def _plates_table(plates: pd.DataFrame) -> str:
    listed = plates.tail(PLATE_ROWS)  # oldest first; the most recent when there are more
    rows = []
    for r in records(listed):
        p = str(r["plate"])
        eq = r["equivalent"]
        rows.append(
            f'<tr data-plate="{esc(p)}"><td><a href="{esc(href(names.plate_page(p)))}">{esc(p)}</a></td>'
            f"<td>{esc(r['date'])}</td><td>{esc(r['donor'])}</td>"
            f'<td><span class="badge {esc(r["qc"])}">{esc(r["qc"])}</span></td>'
            f"{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}{td(r['parallel_f_p'], 'parallel_f_p')}"
            f"<td>{'–' if missing(eq) else ('yes' if truthy(eq) else 'no')}</td>"
            f'<td>{"yes" if r["included"] else "no"}</td><td class="reason">{esc(r["why"])}</td></tr>'
        )
    heads = [
        "plate",
        "date",
        "donor",
        "QC",
        "RP",
        "CI low",
        "CI high",
        "parallel p",
        "equivalent",
        "combined",
        "why not",
    ]
    out = table(heads, rows, ' data-table="potency"')
    older = plates.iloc[: max(0, len(plates) - PLATE_ROWS)]
    if not older.empty:
        out += (
            f'<p class="muted">The {len(listed)} most recent of {len(plates)} plates are listed; the {len(older)} '
            "older ones per year below. Every plate is in <code>potency.csv</code> and "
            "<code>potency_combined_inputs.csv</code> and has its page.</p>" + _per_year(older)
        )
    return out


def _per_year(older: pd.DataFrame) -> str:
    dates = map_distinct(_iso_date, older["date"].tolist())
    year = pd.Series([(d or _dt.date.min).year for d in dates], index=older.index)
    rows = []
    for y, g in older.groupby(year, sort=False):
        rp = g["rp"].astype(float)
        rp = rp[np.isfinite(rp)]
        label = str(y) if y != _dt.date.min.year else "no date"
        rows.append(
            f"<tr><td>{label}</td>{td(len(g))}{td(int(g['included'].sum()))}{td(rp.median() if len(rp) else None)}"
            f"{td(rp.min() if len(rp) else None)}{td(rp.max() if len(rp) else None)}</tr>"
        )
    return table(["year", "plates", "combined", "median RP", "lowest RP", "highest RP"], rows, ' data-table="years"')


def _campaign_block(lot: str, camp: str, plates: pd.DataFrame, t: Mapping[str, pd.DataFrame], level: float) -> str:
    ref = str(plates["reference_lot"].iloc[0])
    comb = t.get("potency_combined", pd.DataFrame(columns=["lot", "reference_lot"]))
    comb = comb[(comb["lot"].astype(str) == lot) & (comb["reference_lot"].astype(str) == ref)]
    combined = None
    if not comb.empty and not missing(comb["rp"].iloc[0]):
        combined = tuple(float(comb[c].iloc[0]) for c in ("rp", "rp_lo", "rp_hi"))
    link = f'<a href="{esc(href(names.campaign_page(camp)))}">campaign {esc(camp)}</a>'
    n_ok = int((plates["status"] == "ok").sum())
    return (
        f'<section class="campaign-block" data-campaign="{esc(camp)}"><h2>{link}: against reference lot {esc(ref)}</h2>'
        f"<p>{len(plates)} plate(s), {n_ok} with an RP, {int(plates['included'].sum())} combined. "
        "Dashed: the plate did not enter the combination."
        + (f" The forest plot shows the {FOREST_PLATES} most recent plates." if len(plates) > FOREST_PLATES else "")
        + "</p>"
        f'<figure class="forest">{_forest(lot, camp, ref, plates, t, level)}</figure>'
        f'<figure class="time">{time_svg(lot, ref, plates, combined)}<figcaption>RP of {esc(lot)} on each plate '
        "against its assay date (open dots: not combined"
        + ("" if len(plates) <= WHISKER_POINTS else "; CI whiskers left out above " + str(WHISKER_POINTS) + " plates")
        + "); line and band: the combined RP and its CI.</figcaption></figure>"
        f"<h3>Plates</h3>{_plates_table(plates)}</section>"
    )


def _history(lot: str, t: Mapping[str, pd.DataFrame]) -> str:
    hist = t.get("plate_history")
    if hist is None or hist.empty:
        return ""
    h = hist[(hist["lot"].astype(str) == lot) & ~hist["current"].map(truthy)]
    if h.empty:
        return ""
    h = h.sort_values(["replaced_at", "plate"], ascending=False, kind="stable")
    rows = [
        f'<tr data-plate="{esc(r["plate"])}" data-version="{esc(r["version"])}"><td>{esc(r["plate"])}</td>'
        f"{td(r['version'], 'version')}<td>{esc(r['accepted_at'])}</td><td>{esc(r['replaced_at'])}</td>"
        f"<td>{'superseded' if not missing(r['replaced_at']) and str(r['replaced_at']) else 'no longer in the run'}</td>"
        f"{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}<td>{esc(r['status'])}</td></tr>"
        for r in records(h.head(HISTORY_ROWS))
    ]
    more = (
        f'<p class="muted">{len(h) - HISTORY_ROWS} older superseded rows are in <code>plate_history.csv</code>.</p>'
        if len(h) > HISTORY_ROWS
        else ""
    )
    heads = ["plate", "version", "accepted", "replaced", "", "RP", "CI low", "CI high", "status"]
    return (
        '<section id="superseded"><h2>Superseded numbers</h2><p>Versions of plates that a corrected export or '
        "layout replaced (or a plate retracted): the numbers they gave for this lot, kept in "
        "<code>plate_history.csv</code>; none of them is in the estimates above.</p>"
        + table(heads, rows, ' data-table="plate_history"')
        + more
        + "</section>"
    )


def _reference_block(lot: str, t: Mapping[str, pd.DataFrame]) -> str:
    qc = t["qc"]
    mine = qc[qc["reference_lot"].astype(str) == lot]
    if mine.empty:
        return ""
    mine = mine.assign(_k=mine["date"].map(date_key)).sort_values(["_k", "plate"], ascending=False)
    rows = [
        f'<tr data-plate="{esc(r["plate"])}"><td><a href="{esc(href(names.plate_page(str(r["plate"]))))}">'
        f"{esc(r['plate'])}</a></td><td>{esc(r['date'])}</td><td>{esc(r['donor'])}</td>"
        f'<td><span class="badge {esc(r["status"])}">{esc(r["status"])}</span></td></tr>'
        for r in records(mine.head(PLATE_ROWS))
    ]
    camps = sorted(set(_campaign_of(mine).values()))
    links = ", ".join(f'<a href="{esc(href(names.campaign_page(c)))}">{esc(c)}</a>' for c in camps)
    more = (
        f'<p class="muted">The {PLATE_ROWS} most recent of {len(mine)} plates are listed.</p>'
        if len(mine) > PLATE_ROWS
        else ""
    )
    return (
        f'<section id="reference"><h2>Reference lot</h2><p>{esc(lot)} is the reference lot (RP = 1 by definition) '
        f"of {len(mine)} plate(s), campaign(s) {links}.</p>"
        + table(["plate", "date", "donor", "QC"], rows, ' data-table="qc"')
        + more
        + "</section>"
    )


def run_colours(tables: Mapping[str, pd.DataFrame]) -> dict[str, str]:
    """{lot: colour} of the run's lots (:func:`cr51.figures.lot_colours`, as the index colours them)."""
    refs = sorted({str(r) for r in tables["qc"]["reference_lot"].dropna()})
    return lot_colours(lots_of(tables), refs)


def build_lot_page(
    lot: str,
    tables: Mapping[str, pd.DataFrame],
    settings: Analysis,
    *,
    generated: str,
    colours: Mapping[str, str] | None = None,
) -> str:
    """The lot's page (HTML).

    Parameters
    ----------
    lot
        The lot.
    tables
        The run's tables: ``potency``, ``qc`` and, where the run has them, ``potency_combined``,
        ``potency_combined_inputs``, ``campaign_lots`` and ``plate_history``.
    settings
        The analysis settings (``potency.ci_level``).
    generated
        When the page was made, as printed (e.g. :func:`now_text`).
    colours
        {lot: colour} of the run (:func:`run_colours`), so that a lot has its index colour; default: the
        colours of ``tables``.
    """
    level = settings.potency.ci_level
    ci = f"{fmt(100 * level)} %"
    plates = plate_rows(lot, tables)
    product = product_of(lot, tables)
    camps = sorted(set(plates["campaign"])) if not plates.empty else []
    colour = (colours or run_colours(tables)).get(lot, REFERENCE_COLOUR)
    meta = (f"product {esc(product)} · " if product else "product not given · ") + (
        f"{len(plates)} plate(s) in {len(camps)} campaign(s)" if len(plates) else "no potency results"
    )
    body = [page_header("Lot", f"Lot {esc(lot)} — potency record", meta, generated)]
    if len(plates):
        body.append(_estimates(lot, tables, ci))
        for camp in camps:
            body.append(_campaign_block(lot, camp, plates[plates["campaign"] == camp], tables, level))
    body.append(_reference_block(lot, tables))
    body.append(_history(lot, tables))
    colours = {lot: colour, campaign_label(lot): colour}
    return document(f"Lot {lot} — potency record", "".join(body), colours, f"Lot {lot} — potency record", generated)


def lots_of(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """Every lot that gets a page: the lots with potency rows and the reference lots, sorted."""
    lots = set(tables["potency"]["lot"].dropna().astype(str)) | set(tables["qc"]["reference_lot"].dropna().astype(str))
    return sorted(lots)


def build_lot_pages(
    tables: Mapping[str, pd.DataFrame], settings: Analysis, *, generated: str, lots: Sequence[str] | None = None
) -> dict[str, str]:
    """{``lots/<name>.html`` (relative to ``results/``, :func:`cr51.report.names.lot_page`): html} for
    ``lots`` (default: :func:`lots_of`). Arguments as :func:`build_lot_page`."""
    by_lot = {}
    for name in ("potency", "potency_combined", "potency_combined_inputs", "campaign_lots", "plate_history"):
        df = tables.get(name)
        if df is not None:
            by_lot[name] = {str(k): g for k, g in df.groupby(df["lot"].astype(str), sort=False)}
    out = {}
    colours = run_colours(tables)
    for lot in lots if lots is not None else lots_of(tables):
        mine = dict(tables)
        for name, groups in by_lot.items():
            mine[name] = groups.get(lot, tables[name].iloc[0:0])
        out[names.lot_page(lot)] = build_lot_page(lot, mine, settings, generated=generated, colours=colours)
    return out
