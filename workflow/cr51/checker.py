"""``cr51-layout check LAYOUT.toml [EXPORT]``: a layout checked before it is dropped.

For technicians writing a layout: resolves the layout's includes exactly as the pipeline does (the
drop folder, i.e. the layout's own folder, then ``layouts_dir``), reads it with the pipeline's own
functions (:func:`cr51.layout.load_layout`; with an export, the whole of :func:`cr51.plate.ingest_plate`:
export, lysis, outliers, QC) and prints every problem the pipeline would report, the layout's
warnings (``LAYOUT_OVERLAP``, ``DESIGN_MISMATCH``) and a plate map: roles, lots, concentrations, E:T
and the replicate count of every condition, as a text table and as a standalone SVG or HTML file.
No settle time, no Snakemake, nothing written to the drop folder.

Exit status: 0 when the plate would be accepted (and, with an export, pass QC); 1 otherwise, with
the reasons; 2 for a usage error (a file that does not exist, an invalid configuration).
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .layout import Layout, LayoutError, load_layout
from .plate import BatchTables, PlateInput, ingest_plate, layout_warning
from .points import design_problems, fit_points
from .schema import FAILING_FLAGS, FLAGS, ROWS
from .settings import SCHEMA_PATH, Analysis, ConfigError, with_defaults

REPO = SCHEMA_PATH.parents[2]
ROLE_CODE = {"spontaneous": "S", "maximum": "M", "background": "B", "vehicle": "V", "sample": ""}
ROLE_COLOUR = {"spontaneous": "#9ecae1", "maximum": "#3182bd", "background": "#d9d9d9", "vehicle": "#fdae6b"}
LOT_COLOURS = ("#31a354", "#e6550d", "#756bb1", "#636363", "#d6616b", "#8c6d31", "#3182bd", "#e7ba52")


@dataclass
class Verdict:
    """What the pipeline would make of a plate: files.csv and qc.csv as the pipeline writes them."""

    accepted: bool
    qc_status: str | None  # None without an export (not checked) or when rejected
    flags: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)  # rejection reasons, QC fail reasons
    warnings: list[str] = field(default_factory=list)  # accepted, but worth a look
    wells: pd.DataFrame | None = None  # the layout's wells (with counts when an export was given)
    layout: Layout | None = None

    @property
    def ok(self) -> bool:
        return self.accepted and self.qc_status in (None, "pass")


def load_settings(configfile: Path | None) -> Analysis:
    """The analysis settings of the pipeline's configuration (``config/config.yaml`` by default)."""
    path = configfile or REPO / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config = with_defaults(config or {})  # the schema's defaults (layouts_dir relative to the repository)
    layouts = Path(config["layouts_dir"])
    config["layouts_dir"] = str(layouts if layouts.is_absolute() else REPO / layouts)
    return Analysis.from_config(config)


def _layout_only(layout_path: Path, settings: Analysis) -> Verdict:
    try:
        layout = load_layout(layout_path, layouts_dir=settings.layouts_dir, max_bytes=settings.max_layout_bytes)
    except LayoutError as err:
        return Verdict(False, None, problems=[f"layout: {err}"])
    wells = layout.wells.assign(plate=layout.plate, excluded=layout.wells["exclude"], lysis_pct=0.0)
    points, _ = fit_points(wells, settings.fit.et_ratio)
    design = design_problems(points, layout.reference_lot, settings.potency.min_concentrations)
    warnings = [layout_warning(layout.warnings)] if layout.warnings else []
    warnings += [f"DESIGN_MISMATCH: lot {lot}: {why}" for lot, why in design.items()]
    if not layout.export_name:
        warnings.append("[meta] path does not name the counter export: the pipeline cannot pair this layout")
    return Verdict(True, None, tuple(["LAYOUT_OVERLAP"] * bool(layout.warnings)) + tuple(["DESIGN_MISMATCH"] * bool(design)),
                   warnings=warnings, wells=wells, layout=layout)  # fmt: skip


def check(layout_path: str | Path, export_path: str | Path | None, settings: Analysis) -> Verdict:
    """The pipeline's verdict on a layout (and its export), by the pipeline's own functions."""
    layout_path = Path(layout_path)
    if export_path is None:
        return _layout_only(layout_path, settings)
    plate = PlateInput(layout_path.stem, str(layout_path), str(export_path))
    out = BatchTables()
    ingest_plate(plate, settings, out)
    rows = {Path(r["file"]).name: r for r in out.files}
    lay, exp = rows[layout_path.name], rows[Path(export_path).name]
    if lay["status"] != "ok":
        problems = list(dict.fromkeys([lay["reason"], exp["reason"]]))
        return Verdict(False, None, problems=problems)
    qc = out.qc[0]
    flags = tuple(f for f in str(qc["flags"]).split(";") if f)
    problems = [f"QC fail: {qc['reason']}"] if qc["status"] == "fail" else []
    warnings = [lay["reason"]] if lay["reason"] else []
    warnings += [
        f"{f}: {FLAGS.get(f, '')}" for f in flags if f not in ("LAYOUT_OVERLAP", "DESIGN_MISMATCH", *FAILING_FLAGS)
    ]
    layout = load_layout(layout_path, layouts_dir=settings.layouts_dir, max_bytes=settings.max_layout_bytes)
    points, _ = fit_points(out.wells[0], settings.fit.et_ratio)
    design = design_problems(points, layout.reference_lot, settings.potency.min_concentrations)
    warnings += [f"DESIGN_MISMATCH: lot {lot}: {why}" for lot, why in design.items()]
    return Verdict(True, str(qc["status"]), flags, problems, warnings, out.wells[0], layout)


# --------------------------------------------------------------------------
# The plate map
# --------------------------------------------------------------------------


def conditions(wells: pd.DataFrame) -> pd.DataFrame:
    """One row per condition (role, lot, conc, E:T): its wells and replicate count."""
    w = wells[wells["role"].fillna("") != ""]
    keys = ["role", "lot", "conc", "et_ratio"]
    out = (
        w.assign(lot=w["lot"].fillna(""))
        .groupby(keys, dropna=False, sort=False)["well"]
        .agg(lambda s: ", ".join(s))
        .reset_index()
    )
    out["n"] = out["well"].str.count(",") + 1
    return out.rename(columns={"well": "wells"})


def _lots(wells: pd.DataFrame, reference: str | None) -> list[str]:
    lots = sorted({str(v) for v in wells["lot"].dropna()})
    return sorted(lots, key=lambda lot: lot != reference)


def _cell(rec: dict, lot_no: dict[str, int]) -> str:
    role = rec.get("role")
    if not isinstance(role, str) or not role:
        return "."
    conc = rec.get("conc")
    et = rec.get("et_ratio")
    if role in ("spontaneous", "maximum", "background"):
        return ROLE_CODE[role]
    lot = rec.get("lot")
    if not isinstance(lot, str):
        return f"U{et:g}"
    return f"{ROLE_CODE[role]}{lot_no[lot]}:{conc:g}"


def text_map(wells: pd.DataFrame, reference: str | None) -> str:
    """The plate as an 8 x 12 text grid, a legend and the conditions with their replicate counts."""
    lots = _lots(wells, reference)
    lot_no = {lot: i + 1 for i, lot in enumerate(lots)}
    by_well = {r["well"]: r for r in wells.to_dict("records")}
    width = max([len(_cell(r, lot_no)) for r in by_well.values()] + [3]) + 1
    lines = ["    " + "".join(f"{c:>{width}}" for c in range(1, 13))]
    for row in ROWS:
        lines.append(
            f"{row:>3} " + "".join(f"{_cell(by_well.get(f'{row}{c}', {}), lot_no):>{width}}" for c in range(1, 13))
        )
    legend = ["S spontaneous, M maximum, B background, U<E:T> untreated sample, <lot>:<conc mg/mL> lot sample, "
              "V<lot>:<conc> vehicle, . no role"]  # fmt: skip
    legend += [f"lot {i}: {lot}" + (" (reference)" if lot == reference else "") for lot, i in lot_no.items()]
    cond = conditions(wells)
    table = ["", f"{'role':<12} {'lot':<12} {'conc':>7} {'E:T':>6} {'n':>3}  wells"]
    for r in cond.to_dict("records"):
        conc = "" if pd.isna(r["conc"]) else f"{r['conc']:g}"
        et = "" if pd.isna(r["et_ratio"]) else f"{r['et_ratio']:g}"
        table.append(f"{r['role']:<12} {r['lot']:<12} {conc:>7} {et:>6} {r['n']:>3}  {r['wells']}")
    return "\n".join(lines + [""] + legend + table)


def svg_map(wells: pd.DataFrame, reference: str | None, title: str) -> str:
    """The plate map as a standalone SVG: one circle per well, coloured by role or lot, labelled."""
    lots = _lots(wells, reference)
    lot_no = {lot: i + 1 for i, lot in enumerate(lots)}
    colour = {lot: LOT_COLOURS[i % len(LOT_COLOURS)] for i, lot in enumerate(lots)}
    by_well = {r["well"]: r for r in wells.to_dict("records")}
    step, left, top = 56, 30, 40
    parts = [f'<text x="{left}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for c in range(1, 13):
        parts.append(
            f'<text x="{left + (c - 0.5) * step}" y="{top - 6}" font-size="11" text-anchor="middle">{c}</text>'
        )
    for i, row in enumerate(ROWS):
        y = top + (i + 0.5) * step
        parts.append(f'<text x="{left - 16}" y="{y + 4}" font-size="11">{row}</text>')
        for c in range(1, 13):
            rec = by_well.get(f"{row}{c}", {})
            role = rec.get("role") if isinstance(rec.get("role"), str) else ""
            lot = rec.get("lot") if isinstance(rec.get("lot"), str) else None
            fill = colour[lot] if lot else ROLE_COLOUR.get(role, "#ffffff" if not role else "#fee391")
            x = left + (c - 0.5) * step
            label = _cell(rec, lot_no)
            tip = ", ".join(
                f"{k} {rec[k]}" for k in ("well", "role", "lot", "conc", "et_ratio") if k in rec and pd.notna(rec[k])
            )
            parts.append(
                f'<g><title>{html.escape(tip)}</title><circle cx="{x}" cy="{y}" r="{step * 0.45:.1f}" fill="{fill}" '
                f'fill-opacity="0.6" stroke="#555"/><text x="{x}" y="{y + 4}" font-size="10" text-anchor="middle">'
                f"{html.escape(label)}</text></g>"
            )
    ly = top + 8 * step + 20
    for k, lot in enumerate(lots):
        ref = " (reference)" if lot == reference else ""
        parts.append(f'<rect x="{left + 150 * (k % 5)}" y="{ly + 18 * (k // 5)}" width="12" height="12" fill="{colour[lot]}"/>'
                     f'<text x="{left + 150 * (k % 5) + 16}" y="{ly + 10 + 18 * (k // 5)}" font-size="11">'
                     f"{lot_no[lot]}: {html.escape(lot)}{ref}</text>")  # fmt: skip
    height = ly + 18 * (len(lots) // 5 + 1) + 30
    parts.append(f'<text x="{left}" y="{height - 12}" font-size="10">S spontaneous · M maximum · B background · '
                 "U&lt;E:T&gt; untreated · &lt;lot&gt;:&lt;mg/mL&gt; sample · V vehicle</text>")  # fmt: skip
    width = left + 12 * step + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif">{"".join(parts)}</svg>')  # fmt: skip


def html_map(verdict: Verdict, title: str) -> str:
    """A standalone HTML page: the verdict, the problems, the SVG map and the conditions table."""
    assert verdict.wells is not None and verdict.layout is not None
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if pd.isna(v) else f'{v:g}' if isinstance(v, float) else str(v))}</td>"
                         for v in (r["role"], r["lot"], r["conc"], r["et_ratio"], r["n"], r["wells"])) + "</tr>"
        for r in conditions(verdict.wells).to_dict("records")
    )  # fmt: skip
    items = "".join(f"<li>{html.escape(p)}</li>" for p in verdict.problems + verdict.warnings)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{'accepted' if verdict.ok else 'NOT accepted'}</p><ul>{items}</ul>"
        f"{svg_map(verdict.wells, verdict.layout.reference_lot, title)}"
        "<table border='1' cellspacing='0'><tr><th>role</th><th>lot</th><th>conc</th><th>E:T</th><th>n</th>"
        f"<th>wells</th></tr>{rows}</table></body></html>"
    )


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="cr51-layout", description="Check a plate layout (and its export) before dropping it."
    )
    sub = ap.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="check LAYOUT.toml [EXPORT] as the pipeline would read them")
    chk.add_argument(
        "layout", type=Path, help="the layout (.toml); includes are looked up beside it, then in layouts_dir"
    )
    chk.add_argument("export", type=Path, nargs="?", help="its counter export (optional: without it the layout alone)")
    chk.add_argument("--map", type=Path, dest="map_path",
                     help="plate map file to write, .svg or .html (default: <layout stem>.map.svg in the current folder)")  # fmt: skip
    chk.add_argument("--no-map", action="store_true", help="write no plate map file")
    chk.add_argument("--configfile", type=Path, help="the pipeline configuration (default: config/config.yaml)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cr51-layout``."""
    args = parse_args(argv)
    for path in (args.layout, args.export):
        if path is not None and not path.is_file():
            print(f"cr51-layout: {path}: no such file", file=sys.stderr)
            return 2
    try:
        settings = load_settings(args.configfile)
    except ConfigError as err:
        print(f"cr51-layout: {err}", file=sys.stderr)
        return 2
    verdict = check(args.layout, args.export, settings)
    name = args.layout.stem
    if verdict.wells is not None:
        print(text_map(verdict.wells, verdict.layout.reference_lot if verdict.layout else None))
        print()
        if not args.no_map:
            out = args.map_path or Path(f"{name}.map.svg")
            title = f"Plate map: {args.layout.name}"
            text = html_map(verdict, title) if out.suffix.lower() in (".html", ".htm") else svg_map(
                verdict.wells, verdict.layout.reference_lot if verdict.layout else None, title)  # fmt: skip
            out.write_text(text, encoding="utf-8")
            print(f"plate map written to {out}")
    for p in verdict.problems:
        print(f"PROBLEM: {p}")
    for w in verdict.warnings:
        print(f"warning: {w}")
    if args.export is None and verdict.accepted:
        print("note: no export given: counts, lysis and QC not checked")
    if verdict.ok:
        qc = f", QC {verdict.qc_status}" if verdict.qc_status else ""
        print(f"{name}: would be accepted{qc}")
        return 0
    what = "rejected" if not verdict.accepted else f"accepted but QC {verdict.qc_status}"
    print(f"{name}: would be {what}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
