"""One page per campaign, ``results/campaigns/<name>.html``: the lots compared across the campaign's plates
(collect job).

A standalone document (:func:`cr51.report.lot_page.document`) from the campaign tables: the answer in one
sentence, the products test, campaign potencies with letters, the pairwise ratio matrix and the similarity
verdicts — rendered by :func:`cr51.report.campaign_section.campaign_section` on the campaign's rows, so the
page and the index say the same — then the campaign potencies per lot as a forest plot (each plate's RP of
the lot, the campaign estimate as the diamond), the tests (``campaign_tests.csv``) and the inputs: every
plate × lot with the ln IC50 that entered or the reason it did not (``campaign_inputs.csv``; the
:data:`INPUT_ROWS` most recent plates). Links to every lot's page, every plate's page and ``../report.html``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..figures import ForestGroup, ForestRow, forest_svg
from ..settings import Analysis
from ..tables import records
from . import names
from .campaign_section import campaign_section
from .html import esc, fmt, missing, table, td, truthy
from .lot_page import FOREST_PLATES, date_order, document, href, page_header, run_colours

#: Plates listed in the inputs table (the most recent; every row is in campaign_inputs.csv).
INPUT_ROWS = 200
#: The campaign tables a page is built from (each filtered to the campaign's rows).
CAMPAIGN_TABLES = ("campaign_inputs", "campaign_lots", "campaign_pairs", "campaign_tests", "campaign_similarity")


def _mine(t: Mapping[str, pd.DataFrame], camp: str) -> dict[str, pd.DataFrame]:
    out = dict(t)
    for name in CAMPAIGN_TABLES:
        if name in t:
            df = t[name]
            out[name] = df[df["campaign"].astype(str) == camp]
    return out


def _by_date(plates: set[str], qc: pd.DataFrame) -> list[str]:
    """The plates oldest first (qc.csv's date; undated first, then by name)."""
    dates = {str(p): d for p, d in zip(qc["plate"].tolist(), qc["date"].tolist()) if str(p) in plates}
    listed = list(plates)
    return [listed[i] for i in date_order([dates.get(p) for p in listed], listed)]


def _forest(camp: str, ref: str, t: Mapping[str, pd.DataFrame], level: float) -> str:
    """Per lot (the reference is the RP = 1 line): its plates' RPs and the campaign RP (diamond)."""
    inputs, lots = t["campaign_inputs"], t["campaign_lots"]
    plates = set(inputs["plate"].astype(str))
    recent = set(_by_date(plates, t["qc"])[-FOREST_PLATES:])
    drawn = inputs[inputs["plate"].astype(str).isin(recent)]
    entered = {(str(p), str(lot)) for p, lot, i in zip(drawn["plate"], drawn["lot"], drawn["included"]) if truthy(i)}
    pci = t.get("potency_combined_inputs")
    rps = pd.DataFrame(columns=["plate", "lot", "rp", "rp_lo", "rp_hi"])
    if pci is not None:
        rps = pci[pci["plate"].astype(str).isin(plates) & (pci["reference_lot"].astype(str) == ref)]
    groups = []
    for r in records(lots):
        lot = str(r["lot"])
        if lot == ref:
            continue
        mine = rps[rps["lot"].astype(str) == lot]
        mine = mine[mine["plate"].astype(str).isin(recent)]
        rows = [
            ForestRow(str(p), float(x), float(lo), float(hi), (str(p), lot) in entered)
            for p, x, lo, hi in zip(mine["plate"], mine["rp"], mine["rp_lo"], mine["rp_hi"])
            if not missing(x)
        ]
        crow = None
        if not missing(r["rp"]) and not missing(r["rp_lo"]):
            crow = ForestRow(
                f"campaign ({int(r['n_plates'])} plates)", float(r["rp"]), float(r["rp_lo"]), float(r["rp_hi"])
            )
        groups.append(ForestGroup(lot, rows, crow))
    if not groups:
        return '<p class="muted">No lot besides the reference.</p>'
    capped = f"; the {FOREST_PLATES} most recent plates" if len(plates) > FOREST_PLATES else ""
    return f'<figure class="forest tall">{forest_svg(groups, [ref], level)}<figcaption>Each plate\'s RP of the lot ' \
        f"(dashed, \"not combined\": the plate's ln IC50 did not enter the campaign{capped}) and the campaign RP " \
        "from the fixed-block model (diamond).</figcaption></figure>"  # fmt: skip


def _lot_links(t: Mapping[str, pd.DataFrame]) -> str:
    rows = [
        f'<tr data-lot="{esc(r["lot"])}"><td><a href="{esc(href(names.lot_page(str(r["lot"]))))}">{esc(r["lot"])}</a>'
        f"</td><td>{esc(r['product'])}</td>{td(r['n_plates'], 'n_plates')}{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}"
        f"{td(r['rp_hi'], 'rp_hi')}<td><b>{esc(r['group'])}</b></td></tr>"
        for r in records(t["campaign_lots"])
    ]
    return table(["lot", "product", "plates", "RP", "CI low", "CI high", "letters"], rows, ' data-table="lot_links"')


def _tests(t: Mapping[str, pd.DataFrame]) -> str:
    rows = [
        f'<tr data-test="{esc(r["test"])}"><td>{esc(r["test"])}</td>{td(r["statistic"], "statistic")}'
        f"{td(r['df1'], 'df1')}{td(r['df2'], 'df2')}{td(r['p'], 'p')}{td(r['sigma2_between'], 'sigma2_between')}"
        f'{td(r["sigma2_residual"], "sigma2_residual")}<td class="reason">{esc(r["note"])}</td></tr>'
        for r in records(t["campaign_tests"])
    ]
    heads = ["test", "F", "df1", "df2", "p", "σ² between lots", "σ² residual", "note"]
    return table(heads, rows, ' data-table="campaign_tests"')


def _inputs(t: Mapping[str, pd.DataFrame], ref: str) -> str:
    """Plate × lot: the ln IC50 that entered the campaign, or a numbered reason why not."""
    inputs = t["campaign_inputs"]
    lots = [ref, *sorted(set(inputs["lot"].astype(str)) - {ref})]
    qc = t["qc"]
    plates = _by_date(set(inputs["plate"].astype(str)), qc)
    listed = plates[-INPUT_ROWS:]
    shown = set(listed)  # only the listed plates' rows are read (records of 60,000 rows were most of the page)
    qc = qc[qc["plate"].isin(set(inputs["plate"]))]
    info = {str(r["plate"]): r for r in records(qc[qc["plate"].astype(str).isin(shown)])}
    cell = {(str(r["plate"]), str(r["lot"])): r for r in records(inputs[inputs["plate"].astype(str).isin(shown)])}
    reasons: dict[str, int] = {}
    body = []
    for p in listed:
        q = info.get(p, {})
        cells = []
        for lot in lots:
            r = cell.get((p, lot))
            if r is None:
                cells.append('<td class="muted">·</td>')
            elif truthy(r["included"]):
                cells.append(td(r["log_ic50"], "log_ic50").replace("<td", f'<td data-lot="{esc(lot)}"', 1))
            else:
                why = "" if missing(r["reason"]) else str(r["reason"])
                k = reasons.setdefault(why, len(reasons) + 1)
                cells.append(f'<td class="muted" data-lot="{esc(lot)}" data-excluded="{k}" title="{esc(why)}">'
                             f"out [{k}]</td>")  # fmt: skip
        body.append(
            f'<tr data-plate="{esc(p)}"><td><a href="{esc(href(names.plate_page(p)))}">{esc(p)}</a></td>'
            f"<td>{esc(q.get('date'))}</td><td>{esc(q.get('donor'))}</td>{''.join(cells)}</tr>"
        )
    heads = ["plate", "date", "donor", *(f'<a href="{esc(href(names.lot_page(x)))}">{esc(x)}</a>' for x in lots)]
    notes = "".join(f'<li value="{k}">{esc(why or "no reason given")}</li>' for why, k in reasons.items())
    more = (
        f'<p class="muted">The {len(listed)} most recent of {len(plates)} plates are listed; every row is in '
        "<code>campaign_inputs.csv</code>.</p>"
        if len(plates) > len(listed)
        else ""
    )
    return (
        "<p>ln IC50 (IVIG mg/mL) of each plate × lot from the plate's final joint parallel fit, where it entered "
        'the campaign; "out [n]": left out, for reason n below.</p>'
        + table(heads, body, ' data-table="campaign_inputs"')
        + (f'<ol class="reasons">{notes}</ol>' if notes else "")
        + more
    )


def build_campaign_page(
    camp: str,
    tables: Mapping[str, pd.DataFrame],
    settings: Analysis,
    *,
    generated: str,
    colours: Mapping[str, str] | None = None,
) -> str:
    """The campaign's page (HTML).

    Parameters
    ----------
    camp
        The campaign (``campaign`` of the campaign tables: ``<study>/<reference lot>`` or the reference lot).
    tables
        The run's tables: the five campaign tables, ``qc`` and ``potency_combined_inputs``.
    settings
        The analysis settings (``potency.alpha``, ``potency.ci_level``, the fit model).
    generated
        When the page was made, as printed.
    colours
        {lot: colour} of the run (:func:`cr51.report.lot_page.run_colours`); default: the colours of ``tables``.
    """
    t = _mine(tables, camp)
    inputs = t["campaign_inputs"]
    ref = str(inputs["reference_lot"].iloc[0]) if len(inputs) else str(t["campaign_lots"]["reference_lot"].iloc[0])
    study = "" if not len(inputs) or missing(inputs["study"].iloc[0]) else str(inputs["study"].iloc[0])
    n_plates, n_lots = inputs["plate"].nunique(), inputs["lot"].nunique()
    meta = (
        f"reference lot {esc(ref)}"
        + (f" · study {esc(study)}" if study else "")
        + f" · {n_plates} plate(s), {n_lots} lot(s)"
    )
    level = settings.potency.ci_level
    body = [
        page_header("Campaign", f"Campaign {esc(camp)}", meta, generated),
        campaign_section(t, settings),
        f'<section id="lots"><h2>Campaign potency per lot ({fmt(100 * level)} % CI)</h2>{_lot_links(t)}'
        f"{_forest(camp, ref, t, level)}</section>",
        f'<section id="tests"><h2>Tests</h2>{_tests(t)}</section>',
        f'<section id="inputs"><h2>Inputs: every plate × lot</h2>{_inputs(t, ref)}</section>',
    ]
    colours = colours if colours is not None else run_colours(tables)
    return document(f"Campaign {camp}", "".join(body), colours, f"Campaign {camp}", generated)


def campaigns_of(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """Every campaign of the run (campaign_tests.csv), sorted."""
    tests = tables.get("campaign_tests")
    return [] if tests is None else sorted(set(tests["campaign"].astype(str)))


def build_campaign_pages(
    tables: Mapping[str, pd.DataFrame], settings: Analysis, *, generated: str, campaigns: Sequence[str] | None = None
) -> dict[str, str]:
    """{``campaigns/<name>.html`` (relative to ``results/``, :func:`cr51.report.names.campaign_page`): html}
    for ``campaigns`` (default: :func:`campaigns_of`). Arguments as :func:`build_campaign_page`.

    Each campaign table is split by campaign once (not filtered again for every campaign)."""
    by_camp = {}
    for name in CAMPAIGN_TABLES:
        df = tables.get(name)
        if df is not None:
            by_camp[name] = {str(k): g for k, g in df.groupby(df["campaign"].astype(str), sort=False)}
    colours = run_colours(tables)
    out = {}
    for c in campaigns if campaigns is not None else campaigns_of(tables):
        mine = dict(tables)
        for name, groups in by_camp.items():
            mine[name] = groups.get(c, tables[name].iloc[0:0])
        out[names.campaign_page(c)] = build_campaign_page(c, mine, settings, generated=generated, colours=colours)
    return out
