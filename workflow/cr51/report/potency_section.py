"""The potency section of the whole-run page: forest plot, combined potencies, verdicts, vehicle
controls and the lots-differ tests (collect job)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..figures import ForestGroup, ForestRow, lot_class
from ..settings import Analysis
from .html import INDEX_ROWS, capped, esc, fmt, more_rows, table, td
from .html import truthy as _truthy
from .names import lot_page, plate_page


def forest_groups(inputs: pd.DataFrame, combined: pd.DataFrame) -> list[ForestGroup]:
    """Forest plot rows: per lot, its plates' RPs (potency_combined_inputs.csv) and the combined RP."""
    comb = {str(r["lot"]): r for r in combined.to_dict("records")}
    groups = []
    for lot, grp in inputs.groupby("lot", sort=True):
        rows = [
            ForestRow(str(r["plate"]), float(r["rp"]), float(r["rp_lo"]), float(r["rp_hi"]), _truthy(r["included"]))
            for r in grp.to_dict("records")
            if not pd.isna(r["rp"])
        ]
        c = comb.get(str(lot))
        crow = None
        if c is not None and c["n_plates"] > 0:
            crow = ForestRow(
                f"combined ({int(c['n_plates'])} plates)", float(c["rp"]), float(c["rp_lo"]), float(c["rp_hi"])
            )
        groups.append(ForestGroup(str(lot), rows, crow))
    return groups


def combined_groups(combined: pd.DataFrame) -> list[ForestGroup]:
    """Forest rows of the index: per lot only its combined RP (its plates are on the lot's page), each
    labelled with its reference lot when the run has more than one."""
    if combined.empty:
        return []
    several = combined["reference_lot"].nunique() > 1
    groups = []
    for c in combined.sort_values(["reference_lot", "lot"], kind="stable").to_dict("records"):
        if c["n_plates"] > 0:
            row = ForestRow(
                f"combined ({int(c['n_plates'])} plates)", float(c["rp"]), float(c["rp_lo"]), float(c["rp_hi"])
            )
            label = f"{c['lot']} vs {c['reference_lot']}" if several else str(c["lot"])
            groups.append(ForestGroup(str(c["lot"]), [], row, label))
    return groups


def potency_section(
    t: Mapping[str, pd.DataFrame],
    forest: str,
    refs: Sequence[str],
    colours: Mapping[str, str],
    settings: Analysis,
) -> str:
    """Forest plot, combined potencies, per-lot verdicts, vehicle controls and the lots-differ tests."""
    ref_text = ", ".join(refs) or "–"
    gate, alpha = settings.potency.parallelism_gate, settings.potency.alpha
    return (
        f'<section id="potency"><h2>Relative potency vs reference lot {esc(ref_text)}</h2>'
        f"<p>RP = IC50(reference) / IC50(lot) from the joint parallel fit of each plate; RP &gt; 1: the lot suppresses "
        f"lysis more strongly than the reference. Plates enter a lot's combined RP (Ph. Eur. 5.3) when the plate passed QC "
        f"and the lot passed the parallelism gate (<code>{esc(gate)}</code>). The plot shows each lot's combined RP; "
        f"the plates' own RPs are in <code>potency_combined_inputs.csv</code> and on each plate's page.</p>"
        f'<figure class="forest">{forest}</figure>'
        f"<h3>Combined potency per lot</h3>{combined_table(t['potency_combined'])}"
        f"<h3>Parallelism and equivalence per lot</h3>{verdict_table(t['potency'], t['potency_combined_inputs'], alpha)}"
        f"<h3>Vehicle controls</h3>{vehicle_block(t['potency'], t['qc'], settings.qc.max_vehicle_suppression_pct)}"
        f"<h3>Do the lots differ within each plate? (within-plate tests; the campaign answer is above)</h3>"
        f"{lots_differ_table(t['lots_differ'], alpha)}</section>"
    )


def combined_table(combined: pd.DataFrame) -> str:
    """potency_combined.csv."""
    rows = [
        f'<tr data-lot="{esc(r["lot"])}"><td><b class="sw {lot_class(str(r["lot"]))}"></b><a href="{esc(lot_page(str(r["lot"])))}">{esc(r["lot"])}</a></td><td>{esc(r["reference_lot"])}</td>'
        f"{td(r['n_plates'], 'n_plates')}{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}"
        f"{td(r['homogeneity_chi2'], 'homogeneity_chi2')}{td(r['homogeneity_p'], 'homogeneity_p')}<td>{esc(r['method'])}</td></tr>"
        for r in combined.to_dict("records")
    ]
    headers = ["lot", "reference", "plates", "RP", "CI low", "CI high", "homogeneity χ²", "homogeneity p", "method"]
    return (
        table(headers, rows, ' data-table="potency_combined"') if rows else '<p class="muted">No potency results.</p>'
    )


def verdict_table(potency: pd.DataFrame, inputs: pd.DataFrame, alpha: float) -> str:
    """Per lot: plates with an RP, parallel by the F test, equivalent (USP <1032>), combined."""
    if potency.empty:
        return '<p class="muted">No potency results.</p>'
    included = inputs.groupby("lot")["included"].apply(lambda s: int(s.map(_truthy).sum())).to_dict()
    rows = []
    for lot, g in potency.groupby("lot", sort=True):
        ok = g["status"] == "ok"
        parallel = int((g["parallel_f_p"] >= alpha).sum())
        equivalent = int(g["equivalent"].map(_truthy).sum())
        rows.append(
            f'<tr data-lot="{esc(lot)}"><td><b class="sw {lot_class(str(lot))}"></b>{esc(lot)}</td>{td(len(g), "plates")}{td(int(ok.sum()), "rp_ok")}'
            f"{td(parallel, 'parallel')}{td(equivalent, 'equivalent')}{td(included.get(lot, 0), 'included')}</tr>"
        )
    headers = [
        "lot",
        "plates",
        "with RP",
        f"parallel (F test p ≥ {fmt(alpha)})",
        "equivalent (USP &lt;1032&gt;)",
        "combined",
    ]
    return table(headers, rows, ' data-table="verdicts"')


def vehicle_block(potency: pd.DataFrame, qc: pd.DataFrame, limit: float) -> str:
    """Lots whose vehicle alone suppressed lysis above ``limit`` (VEHICLE_SUPPRESSION)."""
    measured = potency[potency["vehicle_suppression_pct"].notna()]
    flagged = measured[measured["vehicle_flag"].fillna("") == "VEHICLE_SUPPRESSION"]
    n_plates = int(qc["vehicle_suppression_pct"].notna().sum())
    text = (
        f"<p>{n_plates} plate(s) with vehicle wells; limit: vehicle alone suppresses untreated lysis by ≤ {fmt(limit)} %. "
        f"{len(flagged)} lot × plate result(s) flagged <code>VEHICLE_SUPPRESSION</code>.</p>"
    )
    if flagged.empty:
        return text
    rows = [
        f'<tr data-plate="{esc(r["plate"])}" data-lot="{esc(r["lot"])}"><td><a href="{esc(plate_page(str(r["plate"])))}">{esc(r["plate"])}</a></td>'
        f"<td>{esc(r['lot'])}</td>{td(r['vehicle_suppression_pct'], 'vehicle_suppression_pct', 'bad')}</tr>"
        for r in flagged.to_dict("records")
    ]
    rows, more = capped(rows, "potency.csv")
    return text + table(["plate", "lot", "vehicle suppression %"], rows, ' data-table="vehicle"') + more


def lots_differ_table(differ: pd.DataFrame, alpha: float) -> str:
    """lots_differ.csv (collapsed when long)."""
    rows = [
        f'<tr data-plate="{esc(r["plate"])}"><td><a href="{esc(plate_page(str(r["plate"])))}">{esc(r["plate"])}</a></td>'
        f"{td(r['f'], 'f')}{td(r['df1'], 'df1')}{td(r['df2'], 'df2')}{td(r['p'], 'p')}"
        f"<td>{'differ' if r['p'] < alpha else ('–' if pd.isna(r['p']) else 'no evidence')}</td></tr>"
        for r in differ.head(INDEX_ROWS).to_dict("records")  # only the rows shown (10,000 at 10,000 plates)
    ]
    n_differ = int((differ["p"] < alpha).sum())
    n = len(differ)
    more = more_rows(n, "lots_differ.csv")
    tab = table(["plate", "F", "df1", "df2", "p", f"at α = {fmt(alpha)}"], rows, ' data-table="lots_differ"')
    opened = " open" if n <= 20 else ""
    return (
        f"<details{opened}><summary>Within-plate F test of one common IC50 against one IC50 per lot: {n} plate(s), "
        f"{n_differ} with p &lt; {fmt(alpha)}</summary>{tab}{more}</details>"
    )
