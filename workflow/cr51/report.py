"""The HTML report a lab reads: ``results/report.html`` (one self-contained file) and SVG figures.

Two stages, so that an unchanged plate is not drawn again:

* :func:`plate_sections` — inside each batch job: one collapsed ``<details>`` section per accepted
  plate (plate map, QC against its limits, suppression curves, E:T titration, potency rows),
  kept per plate in the batch output (:func:`split_sections` keys them by plate);
* :func:`build_report` — the final job: run summary, potency (forest plot, combined potencies,
  verdicts, vehicle controls), a plate index, the plate sections in plate order and provenance.

Every number is printed with :func:`fmt`, so it can be checked against the CSVs rounded the same way.
Numeric table cells carry ``data-c="<csv column>"``. No external resource is referenced: CSS, the
figures (inline SVG) and a little optional JavaScript are all inside the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import math
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape, unescape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import __version__
from .digests import file_digest
from .figures import (
    CurvePoints,
    ForestGroup,
    ForestRow,
    JointCurve,
    curves_svg,
    forest_svg,
    lot_class,
    lot_colours,
    standalone,
    titration_svg,
)
from .points import plates_fit_points
from .potency import JOINT_COLUMNS
from .qc import FLAG_TEXT, QCConfig, untreated
from .tables import records

PACKAGES = ("snakemake", "numpy", "pandas", "scipy", "lmfit", "wellmap", "openpyxl", "jsonschema", "pyyaml")
ROWS, COLS = "ABCDEFGH", range(1, 13)
HEAT_STEPS = 8
ROLE_MARK = {"spontaneous": "S", "maximum": "M", "background": "B"}
NEXT_STEP = {
    "rejected": "Correct the file as the reason says and copy the corrected file into the drop folder.",
    "pending": "Nothing, if the file is still being copied or its partner file is on its way; "
    "otherwise add the missing layout or export. It is read again at the next run.",
    "duplicate": "Check that the right export was copied for this plate; re-export it or remove the copy.",
}
_SECTION_START = re.compile(r'^<details class="plate" ', re.M)
_PLATE_ATTR = re.compile(r'data-plate="([^"]*)"')
_LOTS_ATTR = re.compile(r'data-lots="([^"]*)"')
_CURVES = re.compile(r'<figure class="curves">(<svg.*?</svg>)', re.S)


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


def fmt(value: object) -> str:
    """A number as the report prints it: 4 significant digits (whole numbers from 10 000 up to 10^6).

    Missing values print as an en dash, booleans as yes/no, text as itself.
    """
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if math.isnan(v):
        return "–"
    if 1e4 <= abs(v) < 1e6:
        return f"{v:.0f}"
    return f"{v:.4g}"


def esc(text: object) -> str:
    """HTML-escaped text (missing values as an en dash)."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
        return "–"
    return escape(str(text), quote=True)


def td(value: object, col: str | None = None, cls: str = "") -> str:
    """A table cell: numbers right-aligned via ``fmt`` and tagged with their CSV column."""
    numeric = not isinstance(value, str) and value is not None and not isinstance(value, (bool, np.bool_))
    klass = " ".join(c for c in (cls, "n" if numeric else "") if c)
    attrs = (f' class="{klass}"' if klass else "") + (f' data-c="{col}"' if col else "")
    return f"<td{attrs}>{esc(fmt(value)) if numeric or isinstance(value, (bool, np.bool_)) else esc(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[str], attrs: str = "") -> str:
    """A data table from header texts and pre-rendered ``<tr>`` rows."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f'<table class="data"{attrs}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def plate_id(plate: str) -> str:
    """The HTML id of a plate's section (plate names may hold spaces and other characters)."""
    return "plate-" + hashlib.sha1(plate.encode("utf-8")).hexdigest()[:10]


def _truthy(v: object) -> bool:
    return v is True or str(v).lower() == "true"


# --------------------------------------------------------------------------
# Plate sections (batch job)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What a plate section compares against: QC limits and the potency test settings."""

    qc: QCConfig
    alpha: float
    ci_level: float
    et_ratio: float | None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Limits:
        """From the batch settings (``qc``, ``fit``, ``potency`` keys of the config)."""
        pot = settings.get("potency", {})
        return cls(
            QCConfig.from_config(settings.get("qc")),
            float(pot.get("alpha", 0.05)),
            float(pot.get("ci_level", 0.95)),
            settings.get("fit", {}).get("et_ratio"),
        )


def by_plate(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by their ``plate``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["plate"]), []).append(r)
    return out


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def plate_sections(tables: Mapping[str, pd.DataFrame], settings: Mapping[str, Any]) -> str:
    """HTML of one section per accepted plate (qc.csv row) of ``tables``, in plate order.

    The batch's tables are split by plate once, with plain Python rows: a plate costs about a
    millisecond, so that the report stays fast at thousands of plates.
    """
    qc = tables["qc"]
    if qc.empty:
        return ""
    limits = Limits.from_settings(settings)
    wells = tables["wells"]
    pts, ets = plates_fit_points(wells, limits.et_ratio)
    points = by_plate(records(pts.assign(lot=pts["lot"].fillna(""))))
    unt = by_plate(records(untreated(wells)[["plate", "et_ratio", "lysis_pct"]]))
    grouped = {name: by_plate(records(tables[name])) for name in ("wells", "potency", "lots_differ")}
    max_cv = tables["lysis"].groupby("plate")["cv_pct"].max().to_dict()
    sections = []
    for q in sorted(records(qc), key=lambda r: str(r["plate"])):
        plate = str(q["plate"])
        mine = points.get(plate, [])
        curve_points = CurvePoints(
            np.array([r["lot"] for r in mine], dtype=str), np.array([r["conc"] for r in mine], dtype=float),
            np.array([r["lysis"] for r in mine], dtype=float), ets.get(plate, math.nan),
        )  # fmt: skip
        titration = np.array([(r["et_ratio"], r["lysis_pct"]) for r in unt.get(plate, [])], dtype=float).reshape(-1, 2)
        differ = grouped["lots_differ"].get(plate, [None])[0]
        sections.append(
            plate_section(q, grouped["wells"][plate], curve_points, titration, grouped["potency"].get(plate, []),
                          differ, max_cv.get(plate, math.nan), limits)
        )  # fmt: skip
    return "\n".join(sections) + "\n"


def plate_section(
    qc: Mapping[str, Any],
    wells: Sequence[Mapping[str, Any]],
    points: CurvePoints,
    titration: np.ndarray,
    potency: Sequence[Mapping[str, Any]],
    differ: Mapping[str, Any] | None,
    max_cv: float,
    limits: Limits,
) -> str:
    """One plate's collapsed section (``titration``: rows of untreated E:T and % lysis)."""
    plate = str(qc["plate"])
    ref = "" if _missing(qc["reference_lot"]) else str(qc["reference_lot"])
    lots = sorted({str(w["lot"]) for w in wells if not _missing(w["lot"])})
    status = str(qc["status"])
    flags = [f for f in str(qc["flags"]).split(";") if f and not _missing(qc["flags"])]
    meta = " · ".join(
        esc(v) for v in (qc.get("date"), f"donor {qc.get('donor')}", f"reference {ref}") if not _missing(v)
    )
    summary = (
        f'<summary><span class="pname">{esc(plate)}</span> <span class="badge {status}">QC {esc(status)}</span>'
        f' <span class="meta">{meta}</span>'
        + (f' <span class="flags">{esc(", ".join(flags))}</span>' if flags else "")
        + "</summary>"
    )
    curves = curves_svg(points, _joint_curves(potency, ref), ref, f"Suppression curves, plate {plate}")
    titr = titration_svg(
        titration[:, 0],
        titration[:, 1],
        float(qc["lu_a"]),
        float(qc["lu_k"]),
        f"Untreated E:T titration, plate {plate}",
    )
    return (
        f'<details class="plate" id="{plate_id(plate)}" data-plate="{esc(plate)}" data-lots="{esc("|".join(lots))}">'
        f'{summary}<div class="pbody">'
        f'<div class="row"><div><h4>Plate map (CPM)</h4>{plate_map(wells)}</div>'
        f"<div><h4>Quality control</h4>{qc_table(qc, max_cv, limits.qc)}{flag_list(flags)}</div></div>"
        f'<div class="row"><figure class="curves">{curves}<figcaption>Per-well % specific lysis at E:T {points.et_ratio:g}:1 '
        "and the joint parallel fit (shared slope, bottom and top; one IC50 per lot).</figcaption></figure>"
        f'<figure class="titr">{titr}<figcaption>Untreated wells; y = A(1 − e<sup>−k·E:T</sup>).</figcaption></figure></div>'
        f"<h4>Relative potency vs {esc(ref)}</h4>{plate_potency_table(potency, limits)}{differ_text(differ, limits)}"
        "</div></details>"
    )


def _joint_curves(potency: Sequence[Mapping[str, Any]], ref: str) -> list[JointCurve]:
    """The joint parallel fit's curves of the plate (reference first) from potency.csv's joint columns."""
    rows = [r for r in potency if all(not _missing(r.get(c)) for c in JOINT_COLUMNS)]
    if not rows:
        return []
    shared = [float(rows[0][c]) for c in ("joint_slope", "joint_bottom", "joint_top", "joint_f")]
    out = [JointCurve(ref, *shared, float(rows[0]["joint_e_ref"]))]
    return out + [JointCurve(str(r["lot"]), *shared, float(r["joint_e"])) for r in rows]


def plate_map(wells: Sequence[Mapping[str, Any]]) -> str:
    """8 × 12 heat map of CPM: role marks, lot colours, excluded (hatched) and outlier (red) wells."""
    cells = {str(w["well"]): w for w in wells if isinstance(w["well"], str) and w["well"]}
    cpm = [float(w["cpm"]) for w in wells if not _missing(w["cpm"])]
    lo, hi = (min(cpm), max(cpm)) if cpm else (0.0, 1.0)
    rows = ["<tr><th></th>" + "".join(f"<th>{c}</th>" for c in COLS) + "</tr>"]
    for r in ROWS:
        tds = "".join(_well_cell(cells.get(f"{r}{c}"), f"{r}{c}", lo, hi) for c in COLS)
        rows.append(f"<tr><th>{r}</th>{tds}</tr>")
    return f'<table class="pm">{"".join(rows)}</table>'


def _well_cell(w: Mapping[str, Any] | None, well: str, lo: float, hi: float) -> str:
    if w is None:
        return '<td class="e"></td>'
    cpm = float(w["cpm"])
    step = min(int((cpm - lo) / (hi - lo) * HEAT_STEPS), HEAT_STEPS - 1) if math.isfinite(cpm) and hi > lo else 0
    classes = [f"h{step}"] + (["x"] if _truthy(w["excluded"]) else []) + (["o"] if _truthy(w["outlier"]) else [])
    role, lot = str(w["role"]), w["lot"]
    if not _missing(lot):
        mark = f'<b class="{lot_class(str(lot))}">{"V" if role == "vehicle" else "●"}</b>'
        what = f"{lot} {fmt(w['conc'])} mg/mL, E:T {fmt(w['et_ratio'])}" + (" (vehicle)" if role == "vehicle" else "")
    elif role == "sample":
        mark, what = "<b>U</b>", f"untreated, E:T {fmt(w['et_ratio'])}"
    else:
        mark, what = f"<b>{ROLE_MARK.get(role, '?')}</b>", role or "no role in the layout"
    reason = w["exclusion_reason"]
    note = f"; {reason}" if isinstance(reason, str) and reason else ""
    note += "; Dixon Q outlier" if "o" in classes else ""
    title = esc(f"{well}: {what}{note}")
    return f'<td class="{" ".join(classes)}" title="{title}">{mark}{fmt(cpm)}</td>'


def _verdict(ok: bool | None, bad: str = "flag") -> str:
    if ok is None:
        return "<td></td>"
    return '<td class="ok">ok</td>' if ok else f'<td class="bad">{bad}</td>'


def qc_table(qc: Mapping[str, Any], max_cv: float, limits: QCConfig) -> str:
    """QC values of one plate against their limits."""
    spont, veh = float(qc["spontaneous_pct_of_max"]), float(qc["vehicle_suppression_pct"])

    def row(label: str, value: object, col: str, limit: str = "", ok: bool | None = None, bad: str = "flag") -> str:
        return f"<tr><th>{label}</th>{td(value, col)}<td>{limit}</td>{_verdict(ok, bad)}</tr>"

    rows = [
        row("Spontaneous release, % of maximum", spont, "spontaneous_pct_of_max",
            f"≤ {fmt(limits.max_spontaneous_pct_of_max)}", spont <= limits.max_spontaneous_pct_of_max, "FAIL"),
        row("Spontaneous release, mean CPM", qc["spontaneous_cpm"], "spontaneous_cpm"),
        row("Maximum release, mean CPM", qc["maximum_cpm"], "maximum_cpm"),
        row("Largest replicate CV, %", max_cv, "cv_pct", f"≤ {fmt(limits.max_cv_pct)}",
            None if math.isnan(max_cv) else max_cv <= limits.max_cv_pct),
        row("Untreated lysis at top E:T, %", qc["untreated_lysis_pct"], "untreated_lysis_pct"),
        row("LU20 per 10<sup>7</sup> effectors", qc["lu20_per_1e7"], "lu20_per_1e7"),
        row("Vehicle suppression, largest %", veh, "vehicle_suppression_pct",
            f"≤ {fmt(limits.max_vehicle_suppression_pct)}",
            None if math.isnan(veh) else veh <= limits.max_vehicle_suppression_pct),
    ]  # fmt: skip
    return f'<table class="qc"><thead><tr><th></th><th>value</th><th>limit</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table>'


def flag_list(flags: Sequence[str]) -> str:
    """The plate's QC flags in words."""
    if not flags:
        return '<p class="muted">No QC flags.</p>'
    items = "".join(f"<li><code>{esc(f)}</code> {esc(FLAG_TEXT.get(f, ''))}</li>" for f in flags)
    return f'<ul class="flaglist">{items}</ul>'


def plate_potency_table(potency: Sequence[Mapping[str, Any]], limits: Limits) -> str:
    """The plate's potency.csv rows: RP with CI, parallelism and equivalence verdicts, vehicle effect."""
    if not potency:
        return '<p class="muted">No lot other than the reference on this plate.</p>'
    rows = []
    for r in potency:
        parallel = r["parallel_f_p"] >= limits.alpha if not pd.isna(r["parallel_f_p"]) else None
        eq = None if pd.isna(r["equivalent"]) else _truthy(r["equivalent"])
        veh_flag = isinstance(r["vehicle_flag"], str) and r["vehicle_flag"] != ""
        status = esc(r["status"]) + (
            f'<div class="reason">{esc(r["reason"])}</div>' if isinstance(r["reason"], str) and r["reason"] else ""
        )
        rows.append(
            f'<tr data-lot="{esc(r["lot"])}"><td><b class="sw {lot_class(str(r["lot"]))}"></b>{esc(r["lot"])}</td>'
            f"{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}"
            f"{td(r['parallel_f_p'], 'parallel_f_p')}{_verdict(parallel, 'not parallel')}"
            f"{td(r['slope_ratio'], 'slope_ratio')}{td(r['slope_ratio_lo'], 'slope_ratio_lo')}{td(r['slope_ratio_hi'], 'slope_ratio_hi')}"
            f"{_verdict(eq, 'not equivalent')}{td(r['p_holm'], 'p_holm')}"
            f"{td(r['vehicle_suppression_pct'], 'vehicle_suppression_pct', 'bad' if veh_flag else '')}"
            f"<td>{status}</td></tr>"
        )
    level = f"{limits.ci_level:.0%}"
    headers = ["lot", "RP", f"{level} CI low", f"{level} CI high", "parallel F p", "F test", "slope ratio",
               "90 % CI low", "90 % CI high", "USP &lt;1032&gt;", "p vs ref (Holm)", "vehicle supp. %", "status"]  # fmt: skip
    return table(headers, rows, ' data-table="potency"')


def differ_text(differ: Mapping[str, Any] | None, limits: Limits) -> str:
    """One line: do the lots' IC50s differ on this plate (lots_differ.csv)?"""
    if differ is None or pd.isna(differ["p"]):
        return '<p class="muted">Lots differ: F test not available.</p>'
    verdict = "the lots' IC50s differ" if differ["p"] < limits.alpha else "no evidence that the lots' IC50s differ"
    return (
        f'<p>Lots differ (one common IC50 vs one per lot): F = <span data-c="f">{fmt(differ["f"])}</span> '
        f'on <span data-c="df1">{fmt(differ["df1"])}</span> and <span data-c="df2">{fmt(differ["df2"])}</span> df, '
        f'p = <span data-c="p">{fmt(differ["p"])}</span>: {verdict}.</p>'
    )


def split_sections(fragment: str) -> dict[str, str]:
    """{plate: section} of the HTML :func:`plate_sections` returns."""
    out = {}
    starts = [m.start() for m in _SECTION_START.finditer(fragment)]
    for a, b in zip(starts, [*starts[1:], len(fragment)]):
        section = fragment[a:b].strip()
        out[unescape(_PLATE_ATTR.search(section).group(1))] = section  # type: ignore[union-attr]
    return out


def section_lots(section: str) -> list[str]:
    """The lots named in a plate section (its ``data-lots``)."""
    m = _LOTS_ATTR.search(section)
    return [lot for lot in unescape(m.group(1)).split("|") if lot] if m else []


# --------------------------------------------------------------------------
# The whole report (final job)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportInputs:
    """What the report reads: the final tables, the plate sections and the run's configuration."""

    tables: Mapping[str, pd.DataFrame]  # files, qc, potency, lots_differ, potency_combined, potency_combined_inputs
    sections: Mapping[str, str]  # plate -> section (from the batch outputs)
    config: Mapping[str, Any]
    templates: Sequence[str] = ()  # layout templates the plates included (hashed for provenance)


@dataclass(frozen=True)
class Report:
    """The report's HTML and its SVG figures ({path relative to the figures folder: svg})."""

    html: str
    figures: dict[str, str]


def build_report(inputs: ReportInputs) -> Report:
    """The whole report and the figures written beside it."""
    t = inputs.tables
    qc = t["qc"]
    plates = [str(p) for p in qc["plate"]]
    sections = [inputs.sections[p] for p in plates if p in inputs.sections]
    refs = sorted({str(r) for r in qc["reference_lot"].dropna()})
    lots = set(t["potency"]["lot"].astype(str)) | set(refs)
    for s in sections:
        lots.update(section_lots(s))
    colours = lot_colours(lots, refs)
    pot_cfg = inputs.config.get("potency", {})
    ci_level, alpha = float(pot_cfg.get("ci_level", 0.95)), float(pot_cfg.get("alpha", 0.05))
    forest = forest_svg(forest_groups(t["potency_combined_inputs"], t["potency_combined"]), refs, ci_level)
    body = "".join([
        _header(inputs.config),
        summary_section(t["files"], qc),
        potency_section(t, forest, refs, colours, alpha, inputs.config),
        plates_section(t, sections),
        provenance_section(t["files"], inputs.config, inputs.templates),
    ])  # fmt: skip
    figures = {"forest.svg": standalone(forest, colours)}
    for plate, s in zip([p for p in plates if p in inputs.sections], sections):
        m = _CURVES.search(s)
        if m:
            figures[f"plates/{safe_name(plate)}.svg"] = standalone(m.group(1), colours)
    return Report(_page(body, colours), figures)


def safe_name(plate: str) -> str:
    """A file name for a plate's figure (characters other than letters, digits, ``._-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", plate)


def _header(config: Mapping[str, Any]) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in
                  (("summary", "Run summary"), ("potency", "Potency"), ("plates", "Plates"), ("provenance", "Provenance")))  # fmt: skip
    return (
        "<header><h1>⁵¹Cr release assay — IVIG suppression of NK-cell lysis</h1>"
        f'<p class="muted">Drop folder <code>{esc(config.get("raw_dir", ""))}</code> · generated {now} · cr51 {esc(__version__)}</p>'
        f"<nav>{nav}</nav></header>"
    )


def summary_section(files: pd.DataFrame, qc: pd.DataFrame) -> str:
    """Files seen and their status, every file not accepted with its reason, plates' QC."""
    counts = files["status"].value_counts().to_dict()
    n_pass = int((qc["status"] == "pass").sum())
    cards = [("files seen", len(files), "")] + [
        (s, counts.get(s, 0), s) for s in ("ok", "rejected", "pending", "duplicate")
    ] + [("plates accepted", len(qc), ""), ("plates QC pass", n_pass, "ok"), ("plates QC fail", len(qc) - n_pass, "rejected" if len(qc) - n_pass else "")]  # fmt: skip
    card_html = "".join(
        f'<div class="card {cls}" data-status="{esc(label)}"><div class="big">{n}</div><div>{esc(label)}</div></div>'
        for label, n, cls in cards
    )
    bad = files[files["status"] != "ok"]
    if bad.empty:
        problems = '<p class="okmsg">Every file in the drop folder was accepted.</p>'
    else:
        rows = [
            f'<tr data-file="{esc(r["file"])}" class="{esc(r["status"])}"><td><code>{esc(r["file"])}</code></td>'
            f'<td><span class="badge {esc(r["status"])}">{esc(r["status"])}</span></td><td>{esc(r["plate"])}</td>'
            f'<td>{esc(r["reason"])}</td><td class="muted">{esc(NEXT_STEP.get(str(r["status"]), ""))}</td></tr>'
            for r in bad.to_dict("records")
        ]
        problems = "<h3>Files not accepted</h3>" + table(
            ["file", "status", "plate", "reason", "what to do"], rows, ' data-table="files"'
        )
    failed = qc[qc["status"] != "pass"]
    fail_html = ""
    if not failed.empty:
        items = "".join(
            f'<li><a href="#{plate_id(str(r["plate"]))}">{esc(r["plate"])}</a>: '
            + esc("; ".join(FLAG_TEXT.get(f, f) for f in str(r["flags"]).split(";") if f))
            + "</li>"
            for r in failed.to_dict("records")
        )
        fail_html = f"<h3>Plates that failed QC (not used for potency)</h3><ul>{items}</ul>"
    return (
        f'<section id="summary"><h2>Run summary</h2><div class="cards">{card_html}</div>{problems}{fail_html}</section>'
    )


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


def potency_section(
    t: Mapping[str, pd.DataFrame],
    forest: str,
    refs: Sequence[str],
    colours: Mapping[str, str],
    alpha: float,
    config: Mapping[str, Any],
) -> str:
    """Forest plot, combined potencies, per-lot verdicts, vehicle controls and the lots-differ tests."""
    ref_text = ", ".join(refs) or "–"
    gate = config.get("potency", {}).get("parallelism_gate", "f_test")
    return (
        f'<section id="potency"><h2>Relative potency vs reference lot {esc(ref_text)}</h2>'
        f"<p>RP = IC50(reference) / IC50(lot) from the joint parallel fit of each plate; RP &gt; 1: the lot suppresses "
        f"lysis more strongly than the reference. Plates enter a lot's combined RP (Ph. Eur. 5.3) when the plate passed QC "
        f"and the lot passed the parallelism gate (<code>{esc(gate)}</code>); dashed: plate not combined.</p>"
        f'<figure class="forest">{forest}</figure>'
        f"<h3>Combined potency per lot</h3>{combined_table(t['potency_combined'])}"
        f"<h3>Parallelism and equivalence per lot</h3>{verdict_table(t['potency'], t['potency_combined_inputs'], alpha)}"
        f"<h3>Vehicle controls</h3>{vehicle_block(t['potency'], t['qc'], config)}"
        f"<h3>Do the lots differ?</h3>{lots_differ_table(t['lots_differ'], alpha)}</section>"
    )


def combined_table(combined: pd.DataFrame) -> str:
    """potency_combined.csv."""
    rows = [
        f'<tr data-lot="{esc(r["lot"])}"><td><b class="sw {lot_class(str(r["lot"]))}"></b>{esc(r["lot"])}</td><td>{esc(r["reference_lot"])}</td>'
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


def vehicle_block(potency: pd.DataFrame, qc: pd.DataFrame, config: Mapping[str, Any]) -> str:
    """Lots whose vehicle alone suppressed lysis above the limit (VEHICLE_SUPPRESSION)."""
    limit = QCConfig.from_config(config.get("qc")).max_vehicle_suppression_pct
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
        f'<tr data-plate="{esc(r["plate"])}" data-lot="{esc(r["lot"])}"><td><a href="#{plate_id(str(r["plate"]))}">{esc(r["plate"])}</a></td>'
        f"<td>{esc(r['lot'])}</td>{td(r['vehicle_suppression_pct'], 'vehicle_suppression_pct', 'bad')}</tr>"
        for r in flagged.to_dict("records")
    ]
    return text + table(["plate", "lot", "vehicle suppression %"], rows, ' data-table="vehicle"')


def lots_differ_table(differ: pd.DataFrame, alpha: float) -> str:
    """lots_differ.csv (collapsed when long)."""
    rows = [
        f'<tr data-plate="{esc(r["plate"])}"><td><a href="#{plate_id(str(r["plate"]))}">{esc(r["plate"])}</a></td>'
        f"{td(r['f'], 'f')}{td(r['df1'], 'df1')}{td(r['df2'], 'df2')}{td(r['p'], 'p')}"
        f"<td>{'differ' if r['p'] < alpha else ('–' if pd.isna(r['p']) else 'no evidence')}</td></tr>"
        for r in differ.to_dict("records")
    ]
    n_differ = int((differ["p"] < alpha).sum())
    tab = table(["plate", "F", "df1", "df2", "p", f"at α = {fmt(alpha)}"], rows, ' data-table="lots_differ"')
    opened = " open" if len(rows) <= 20 else ""
    return (
        f"<details{opened}><summary>F test of one common IC50 against one IC50 per lot: {len(rows)} plate(s), "
        f"{n_differ} with p &lt; {fmt(alpha)}</summary>{tab}</details>"
    )


def plates_section(t: Mapping[str, pd.DataFrame], sections: Sequence[str]) -> str:
    """Plate index (links) and the plate sections."""
    qc = t["qc"]
    n_rp = t["potency"].groupby("plate")["status"].apply(lambda s: f"{int((s == 'ok').sum())}/{len(s)}").to_dict()
    rows = [
        f'<tr data-plate="{esc(r["plate"])}"><td><a href="#{plate_id(str(r["plate"]))}">{esc(r["plate"])}</a></td>'
        f"<td>{esc(r['date'])}</td><td>{esc(r['donor'])}</td><td>{esc(r['reference_lot'])}</td>"
        f'<td><span class="badge {esc(r["status"])}">{esc(r["status"])}</span></td>'
        f'<td class="flags">{esc(str(r["flags"]).replace(";", ", ") if isinstance(r["flags"], str) else "")}</td>'
        f'<td class="n">{esc(n_rp.get(r["plate"], "–"))}</td></tr>'
        for r in qc.to_dict("records")
    ]
    index = table(["plate", "date", "donor", "reference", "QC", "flags", "lots with RP"], rows, ' id="plate-index"')
    legend = (
        '<p class="legend">Plate map: grey scale = CPM (light = low, dark = high); '
        "<b>S</b> spontaneous, <b>M</b> maximum, <b>B</b> background, <b>U</b> untreated, "
        "<b>●</b> IVIG lot (its colour), <b>V</b> vehicle; "
        '<span class="lg x">hatched</span> excluded well, <span class="lg o">red frame</span> outlier. '
        "Hover over a well for its details.</p>"
    )
    return (
        f'<section id="plates"><h2>Plates ({len(qc)})</h2><div id="plate-tools"></div>'
        f'<div class="index">{index}</div>{legend}{"".join(sections)}</section>'
    )


def provenance_section(files: pd.DataFrame, config: Mapping[str, Any], templates: Sequence[str]) -> str:
    """Software versions, the configuration used and the sha256 of every input file."""
    versions = [("cr51", __version__), ("Python", platform.python_version()), ("platform", platform.platform())]
    for pkg in PACKAGES:
        try:
            versions.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((pkg, "not installed"))
    vrows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in versions)
    frows = [
        f"<tr><td><code>{esc(r['file'])}</code></td><td>{esc(r['status'])}</td>{td(r['bytes'], 'bytes')}"
        f"<td><code>{esc(r['sha256'])}</code></td></tr>"
        for r in files.to_dict("records")
    ]
    for path in templates:
        sha, size = file_digest(path)
        frows.append(
            f"<tr><td><code>{esc(path)}</code></td><td>template</td>{td(size, 'bytes')}<td><code>{sha}</code></td></tr>"
        )
    cfg = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    return (
        '<section id="provenance"><h2>Provenance</h2><div class="row">'
        f'<div><h3>Software</h3><table class="kv">{vrows}</table></div>'
        f"<div><h3>Configuration used</h3><pre>{esc(cfg)}</pre></div></div>"
        f"<details><summary>Input files and their sha256 ({len(frows)})</summary>"
        f"{table(['file', 'status', 'bytes', 'sha256'], frows, ' data-table=sha256')}</details></section>"
    )


def _page(body: str, colours: Mapping[str, str]) -> str:
    lot_css = "".join(f".{lot_class(lot)}{{color:{c}}}" for lot, c in sorted(colours.items()))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>51Cr release assay report</title>"
        f"<style>{CSS}{lot_css}</style></head><body>{body}<script>{JS}</script></body></html>"
    )


def write_report(report: Report, html_path: str | Path, figures_dir: str | Path) -> None:
    """Write the HTML and the figures (``figures_dir``/forest.svg, ``figures_dir``/plates/<plate>.svg)."""
    html_path, figures_dir = Path(html_path), Path(figures_dir)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    (figures_dir / "plates").mkdir(parents=True, exist_ok=True)
    for name, content in report.figures.items():
        (figures_dir / name).write_text(content, encoding="utf-8")
    html_path.write_text(report.html, encoding="utf-8")


CSS = """
:root{--ink:#1d1d1f;--muted:#666;--line:#d9d9d9;--ok:#1b7a3a;--bad:#b3261e;--warn:#9a6700}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--ink);margin:0 auto;
 max-width:1200px;padding:0 24px 40px;-webkit-print-color-adjust:exact;print-color-adjust:exact}
header{border-bottom:2px solid var(--ink);padding:18px 0 8px;margin-bottom:8px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}h4{font-size:13px;margin:10px 0 4px;text-transform:uppercase;letter-spacing:.04em;color:#444}
nav a{margin-right:16px;color:#0b57d0;text-decoration:none;font-weight:600}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.muted{color:var(--muted)}.okmsg{color:var(--ok);font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:110px;background:#fafafa}
.card .big{font-size:24px;font-weight:700}.card.ok .big{color:var(--ok)}.card.rejected .big{color:var(--bad)}
.card.pending .big{color:var(--warn)}.card.duplicate .big{color:var(--warn)}
table.data{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
table.data th{background:#f1f3f4;text-align:left;font-weight:600;padding:4px 8px;border-bottom:1px solid #bbb}
table.data td{padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}
table.data td:first-child{white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.ok{color:var(--ok)}td.bad{color:var(--bad);font-weight:600}
.reason{color:var(--muted);font-size:12px;max-width:260px}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e8e8e8}
.badge.pass,.badge.ok{background:#dcefe2;color:var(--ok)}.badge.fail,.badge.rejected{background:#f7dcda;color:var(--bad)}
.badge.pending,.badge.duplicate{background:#fbedc8;color:var(--warn)}
b.sw{display:inline-block;width:10px;height:10px;border-radius:2px;background:currentColor;margin-right:6px}
.index{max-height:420px;overflow:auto;border:1px solid var(--line)}.index table{margin:0;width:100%}
.index thead th{position:sticky;top:0}
#plate-tools{margin:6px 0}#plate-tools button,#plate-tools input{font:inherit;margin-right:8px;padding:3px 10px}
details.plate{border:1px solid var(--line);border-radius:8px;margin:8px 0;background:#fff}
details.plate>summary{cursor:pointer;padding:8px 12px;background:#f7f7f8;border-radius:8px}
details.plate[open]>summary{border-bottom:1px solid var(--line);border-radius:8px 8px 0 0}
.pname{font-weight:700}.meta{color:var(--muted);margin-left:8px}.flags{color:var(--warn);font-size:12px;margin-left:8px}
.pbody{padding:4px 14px 12px}.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
figure{margin:6px 0}figcaption{font-size:12px;color:var(--muted);max-width:560px}
svg{max-width:100%;height:auto}svg text{fill:#222}
table.pm{border-collapse:collapse;font-size:10px;font-variant-numeric:tabular-nums}
table.pm th{font-weight:600;color:#555;padding:1px 3px}
table.pm td{width:44px;height:32px;text-align:center;border:1px solid #fff;line-height:1.1;padding:0}
table.pm td b{display:block;font-size:11px}table.pm td.e{background:#fff;border:1px dashed #ddd}
.h0{background:#f5f5f5}.h1{background:#e6e6e6}.h2{background:#d4d4d4}.h3{background:#bdbdbd}
.h4{background:#a3a3a3}.h5{background:#858585;color:#fff}.h6{background:#636363;color:#fff}.h7{background:#3f3f3f;color:#fff}
table.pm td.x,.lg.x{background-image:repeating-linear-gradient(45deg,transparent 0 4px,rgba(200,0,0,.45) 4px 6px);text-decoration:line-through}
table.pm td.o,.lg.o{outline:2px solid #d00;outline-offset:-2px}
.lg{padding:0 4px}.legend{font-size:12px;color:#444}
table.qc{border-collapse:collapse;font-size:13px}table.qc th{text-align:left;font-weight:500;padding:2px 10px 2px 0}
table.qc thead th{color:var(--muted);font-weight:600}table.qc td{padding:2px 10px 2px 0}
table.qc td[data-c]{text-align:right;font-variant-numeric:tabular-nums}
.flaglist{margin:6px 0;padding-left:18px;font-size:13px}
pre{background:#f6f8fa;padding:8px;font-size:12px;overflow:auto;max-height:420px}
table.kv th{text-align:left;padding-right:12px;font-weight:600}
@media print{body{max-width:none;padding:0;font-size:11px}nav,#plate-tools{display:none}
 .index{max-height:none;overflow:visible;border:0}details.plate{break-inside:avoid-page;border:0;border-top:1px solid #999}
 details.plate>summary{background:none}section{break-before:page}section#summary{break-before:auto}
 pre{max-height:none}a{color:inherit;text-decoration:none}}
"""

JS = """
(function(){
var bar=document.getElementById('plate-tools');if(!bar)return;
function plates(){return Array.prototype.slice.call(document.querySelectorAll('details.plate'));}
function button(id,label,open){var b=document.createElement('button');b.type='button';b.id=id;b.textContent=label;
 b.onclick=function(){plates().forEach(function(d){d.open=open;});};bar.appendChild(b);}
button('expand-all','Expand all plates',true);button('collapse-all','Collapse all',false);
var q=document.createElement('input');q.type='search';q.id='plate-filter';q.placeholder='Filter plates (name, date, donor, flag)';
q.size=36;bar.appendChild(q);
q.oninput=function(){var s=q.value.toLowerCase();document.querySelectorAll('#plate-index tbody tr').forEach(function(tr){
 tr.hidden=s!==''&&tr.textContent.toLowerCase().indexOf(s)<0;});};
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));var d=id&&document.getElementById(id);
 if(d&&d.tagName==='DETAILS'){d.open=true;}}
window.addEventListener('hashchange',openTarget);openTarget();
var before=[];window.addEventListener('beforeprint',function(){before=plates().map(function(d){return d.open;});
 plates().forEach(function(d){d.open=true;});});
window.addEventListener('afterprint',function(){plates().forEach(function(d,i){d.open=before[i];});});
})();
"""
