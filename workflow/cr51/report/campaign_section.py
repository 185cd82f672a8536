"""The campaign section of the whole-run page (collect job): per campaign, the answer in one sentence
(do the lots differ, which pairs, by how much), the letter display and pairwise matrix, campaign
potencies with CIs and the similarity verdicts (campaign_*.csv, :mod:`cr51.campaign`)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..settings import Analysis
from .html import esc, fmt, table, td


def campaign_section(t: Mapping[str, pd.DataFrame], settings: Analysis) -> str:
    """The ``#campaign`` section (empty text when the run has no campaign tables)."""
    if "campaign_tests" not in t:
        return ""
    alpha = settings.potency.alpha
    parts = [
        '<section id="campaign"><h2>Campaign: do the lots differ across donors?</h2>'
        "<p>A campaign is the plates sharing a reference lot (and study). Each plate's ln IC50s from its joint "
        "parallel fit are compared with the plate (donor) as a fixed block: lots are compared within plates, "
        "plate-to-plate variation is not evidence that lots differ. Pairs: Tukey-adjusted. The per-plate "
        "tests further down are <em>within-plate</em> tests, not the campaign's answer.</p>"
    ]
    model = settings.fit.models[0]
    if model == "LL.5":
        parts.append(
            '<p class="warn">Potency model LL.5 is <b>not usable</b> with six doses per lot: its free model has an '
            "asymmetry per curve that six doses cannot determine, so most parallelism tests cannot be computed. "
            "Use LL.4 (<code>fit.models</code>; docs/campaign.md).</p>"
        )
    else:
        parts.append(f'<p class="muted">Potency model {esc(model)} (usable with six doses per lot; LL.5 is not).</p>')
    tests = t["campaign_tests"]
    for camp in sorted(tests["campaign"].astype(str).unique()):
        parts.append(_one(camp, t, alpha, settings))
    parts.append("</section>")
    return "".join(parts)


def answer(camp: str, tests: pd.DataFrame, pairs: pd.DataFrame, alpha: float) -> str:
    """The campaign's answer in one sentence (plain text)."""
    row = tests[(tests["campaign"] == camp) & (tests["test"] == "lots_differ")]
    if row.empty or pd.isna(row["p"].iloc[0]):
        note = "" if row.empty else str(row["note"].iloc[0])
        return f"Campaign {camp}: the lots cannot be compared across plates ({note})."
    r = row.iloc[0]
    mine = pairs[(pairs["campaign"] == camp) & (pairs["p_adj"] < alpha)]
    stat = f"F = {fmt(r['statistic'])} on {fmt(r['df1'])} and {fmt(r['df2'])} df, p = {fmt(r['p'])}"
    if r["p"] >= alpha and mine.empty:
        return f"Campaign {camp}: no evidence that the lots differ ({stat}); no pair differs at α = {fmt(alpha)}."
    verdict = "the lots differ" if r["p"] < alpha else "no overall evidence that the lots differ"
    listed = ", ".join(f"{a} vs {b} (ratio {fmt(x)})" for a, b, x in zip(mine["lot_a"], mine["lot_b"], mine["ratio"]))
    n_pairs = int((pairs["campaign"] == camp).sum())
    return f"Campaign {camp}: {verdict} ({stat}); {len(mine)} of {n_pairs} pairs differ at α = {fmt(alpha)}" + (
        f": {listed}." if listed else "."
    )


def _one(camp: str, t: Mapping[str, pd.DataFrame], alpha: float, settings: Analysis) -> str:
    tests, pairs, lots, sim = (
        t[k] for k in ("campaign_tests", "campaign_pairs", "campaign_lots", "campaign_similarity")
    )
    lots = lots[lots["campaign"] == camp]
    out = [f'<div class="campaign" data-campaign="{esc(camp)}"><h3>Campaign {esc(camp)}</h3>']
    out.append(f'<p class="answer">{esc(answer(camp, tests, pairs, alpha))}</p>')
    prod = tests[(tests["campaign"] == camp) & (tests["test"] == "products_differ")]
    if not prod.empty:
        r = prod.iloc[0]
        out.append(
            f"<p>Products (brands) against the lot-to-lot variation within products: F = {fmt(r['statistic'])} on "
            f"{fmt(r['df1'])} and {fmt(r['df2'])} df, p = {fmt(r['p'])}; variance between lots within products "
            f"{fmt(r['sigma2_between'])}, residual {fmt(r['sigma2_residual'])} (ln IC50²).</p>"
        )
    level = fmt(100 * settings.potency.ci_level)
    rows = [
        f'<tr data-lot="{esc(r["lot"])}"><td>{esc(r["lot"])}</td><td>{esc(r["product"])}</td>{td(r["n_plates"])}'
        f"{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}<td><b>{esc(r['group'])}</b></td></tr>"
        for r in lots.to_dict("records")
    ]
    out.append(
        f"<h4>Campaign potency vs the reference ({level} % CI) and letters</h4>"
        + table(["lot", "product", "plates", "RP", "lo", "hi", "group"], rows, ' data-table="campaign_lots"')
        + '<p class="muted">Lots sharing a letter do not differ (Tukey, α = '
        + fmt(alpha)
        + ").</p>"
    )
    mine = pairs[pairs["campaign"] == camp]
    names = [str(x) for x in lots["lot"] if (mine["lot_a"] == x).any() or (mine["lot_b"] == x).any()]
    if names:
        cell = {(str(r["lot_a"]), str(r["lot_b"])): r for r in mine.to_dict("records")}
        body = []
        for a in names:
            cells = []
            for b in names:
                r = cell.get((a, b))
                inv = cell.get((b, a))
                if a == b:
                    cells.append('<td class="muted">–</td>')
                elif r is not None or inv is not None:
                    ratio = r["ratio"] if r is not None else 1.0 / inv["ratio"]
                    p = (r if r is not None else inv)["p_adj"]
                    star = " *" if p < alpha else ""
                    cells.append(f'<td title="p_adj = {fmt(p)}">{fmt(ratio)}{star}</td>')
                else:
                    cells.append("<td>–</td>")
            body.append(f"<tr><th>{esc(a)}</th>{''.join(cells)}</tr>")
        out.append(
            "<h4>Pairwise potency ratios (row / column; * Tukey p_adj &lt; α)</h4>"
            + table(["", *[esc(n) for n in names]], body, ' data-table="campaign_pairs"')
        )
    s = sim[sim["campaign"] == camp]
    rows = [
        f'<tr data-lot="{esc(r["lot"])}"><td>{esc(r["lot"])}</td>{td(r["n_plates"])}{td(r["slope_ratio"])}'
        f"{td(r['slope_ratio_lo'])}{td(r['slope_ratio_hi'])}{td(r['bottom_diff'])}{td(r['bottom_diff_lo'])}"
        f"{td(r['bottom_diff_hi'])}<td>{esc(r['verdict'])}</td></tr>"
        for r in s.to_dict("records")
    ]
    out.append(
        f"<h4>Similarity to the reference over the campaign ({fmt(100 - 200 * alpha)} % CIs, USP &lt;1032&gt;)</h4>"
        + table(
            ["lot", "plates", "slope ratio", "lo", "hi", "bottom diff", "lo", "hi", "verdict"],
            rows,
            ' data-table="campaign_similarity"',
        )  # fmt: skip
        + '<p class="muted">The top is shared by construction (the untreated wells are every lot\'s dose 0).</p>'
    )
    out.append("</div>")
    return "".join(out)
