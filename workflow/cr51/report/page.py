"""The whole-run page ``results/report.html`` and the SVG files beside it, built in the collect job.

Run summary, potency (forest plot, combined potencies, verdicts, vehicle controls), a plate
index, the plate sections (drawn in the batch jobs, :mod:`cr51.report.plate`) in plate order and
provenance. No external resource is referenced: the stylesheet, the figures (inline SVG) and a
little optional JavaScript are all inside the file.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .. import __version__
from ..digests import file_digest
from ..figures import forest_svg, lot_class, lot_colours
from ..schema import FILE_STATUSES, FLAGS
from ..settings import Settings
from ..tables import write_text_atomic
from .campaign_section import campaign_section
from .html import esc, plate_id, table, td
from .potency_section import forest_groups, potency_section
from .section import Section

PACKAGES = ("snakemake", "numpy", "pandas", "scipy", "lmfit", "wellmap", "openpyxl", "jsonschema", "pyyaml")
NEXT_STEP = {
    "rejected": "Correct the file as the reason says and copy the corrected file into the drop folder.",
    "pending": "Nothing, if the file is still being copied or its partner file is on its way; "
    "otherwise add the missing layout or export. It is read again at the next run.",
    "duplicate": "Check that the right export was copied for this plate; re-export it or remove the copy.",
    "stale": "This file has waited too long: add its missing partner, correct the name the reason points to, "
    "or remove it from the drop folder.",
    "retracted": "Nothing: the plate is out of every table as its .retract file asks. Delete that file to restore it.",
    "gone": "Nothing, if the file was moved on purpose: the plate stays, computed from the archive. Otherwise "
    "copy it back.",
    "ignored": "Move the file to the drop folder's top level as a regular file if it is plate data; otherwise nothing.",
}
#: The page's stylesheet and script (package data files of :mod:`cr51.report`).
CSS = files(__package__).joinpath("style.css").read_text(encoding="utf-8")
JS = files(__package__).joinpath("script.js").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ReportInputs:
    """What the report reads: the final tables, the plate sections and the run's configuration."""

    tables: Mapping[str, pd.DataFrame]  # files, qc, potency, lots_differ, potency_combined, potency_combined_inputs
    sections: Mapping[str, Section]  # plate -> section (from the batch outputs)
    config: Mapping[str, Any]  # the run's configuration (validated; shown in the provenance)
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
        lots.update(s.lots)
    colours = lot_colours(lots, refs)
    settings = Settings.from_config(inputs.config)
    ci_level = settings.analysis.potency.ci_level
    groups = forest_groups(t["potency_combined_inputs"], t["potency_combined"])
    forest = forest_svg(groups, refs, ci_level)
    body = "".join([
        _header(settings.raw_dir),
        summary_section(t["files"], qc),
        campaign_section(t, settings.analysis),
        potency_section(t, forest, refs, colours, settings.analysis),
        plates_section(t, sections),
        history_section(t["plate_history"]) if "plate_history" in t else "",
        provenance_section(t["files"], inputs.config, inputs.templates),
    ])  # fmt: skip
    figures = {"forest.svg": forest_svg(groups, refs, ci_level, colours)}
    for s in sections:
        curves = s.figure("curves")
        if curves is not None:
            figures[f"plates/{safe_name(s.plate)}.svg"] = curves.svg(colours)
    return Report(_page(body, colours), figures)


def safe_name(plate: str) -> str:
    """A file name for a plate's figure (characters other than letters, digits, ``._-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", plate)


def _header(raw_dir: str) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in
                  (("summary", "Run summary"), ("campaign", "Campaign"), ("potency", "Potency"), ("plates", "Plates"), ("provenance", "Provenance")))  # fmt: skip
    return (
        "<header><h1>⁵¹Cr release assay — IVIG suppression of NK-cell lysis</h1>"
        f'<p class="muted">Drop folder <code>{esc(raw_dir)}</code> · generated {now} · cr51 {esc(__version__)}</p>'
        f"<nav>{nav}</nav></header>"
    )


def summary_section(files: pd.DataFrame, qc: pd.DataFrame) -> str:
    """Files seen and their status, every file not accepted with its reason, plates' QC."""
    counts = files["status"].value_counts().to_dict()
    n_pass = int((qc["status"] == "pass").sum())
    cards = [("files seen", len(files), "")] + [
        (s, counts.get(s, 0), s) for s in FILE_STATUSES if s in ("ok", "rejected", "pending", "duplicate") or counts.get(s)
    ] + [("plates accepted", len(qc), ""), ("plates QC pass", n_pass, "ok"), ("plates QC fail", len(qc) - n_pass, "rejected" if len(qc) - n_pass else "")]  # fmt: skip
    card_html = "".join(
        f'<div class="card {cls}" data-status="{esc(label)}"><div class="big">{n}</div><div>{esc(label)}</div></div>'
        for label, n, cls in cards
    )
    bad = files[files["status"] != "ok"]
    if bad.empty and len(files):
        problems = '<p class="okmsg">Every file in the drop folder was accepted.</p>'
    elif bad.empty:
        problems = '<p class="muted">The drop folder holds no files.</p>'
    else:
        rows = [
            f'<tr data-file="{esc(r["file"])}" class="{esc(r["status"])}"><td><code>{esc(r["file"])}</code></td>'
            f'<td><span class="badge {esc(r["status"])}">{esc(r["status"])}</span></td><td>{esc(r["plate"])}</td>'
            f'<td>{esc(r["reason"])}</td><td class="muted">{esc(NEXT_STEP.get(str(r["status"]), ""))}</td></tr>'
            for r in bad.to_dict("records")
        ]
        problems = "<h3>Files not accepted, not read, retracted or gone</h3>" + table(
            ["file", "status", "plate", "reason", "what to do"], rows, ' data-table="files"'
        )
    failed = qc[qc["status"] != "pass"]
    fail_html = ""
    if not failed.empty:
        items = "".join(
            f'<li><a href="#{plate_id(str(r["plate"]))}">{esc(r["plate"])}</a>: '
            + esc("; ".join(FLAGS.get(f, f) for f in str(r["flags"]).split(";") if f))
            + "</li>"
            for r in failed.to_dict("records")
        )
        fail_html = f"<h3>Plates that failed QC (not used for potency)</h3><ul>{items}</ul>"
    return (
        f'<section id="summary"><h2>Run summary</h2><div class="cards">{card_html}</div>{problems}{fail_html}</section>'
    )


def history_section(history: pd.DataFrame) -> str:
    """Plates with more than one accepted version: each version's files, dates and RP per lot."""
    several = history.groupby("plate")["version"].nunique()
    replaced = history[history["plate"].isin(several[several > 1].index)]
    if replaced.empty:
        return ""
    rows = [
        f'<tr data-plate="{esc(r["plate"])}"><td>{esc(r["plate"])}</td>{td(r["version"], "version")}'
        f"<td>{esc(r['accepted_at'])}</td><td>{esc(r['replaced_at'])}</td>"
        f"<td>{'current' if r['current'] is True or str(r['current']) == 'True' else 'superseded'}</td>"
        f"<td>{esc(r['lot'])}</td>{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}"
        f"<td><code>{esc(str(r['export_sha256'])[:12])}</code></td></tr>"
        for r in replaced.to_dict("records")
    ]
    headers = ["plate", "version", "accepted", "replaced", "", "lot", "RP", "CI low", "CI high", "export sha256"]
    return (
        '<section id="history"><h2>Re-exported plates</h2><p>A corrected export or layout replaced these plates\' '
        "results; the superseded versions stay in the archive and in <code>plate_history.csv</code> with the "
        "numbers they gave.</p>" + table(headers, rows, ' data-table="plate_history"') + "</section>"
    )


def plates_section(t: Mapping[str, pd.DataFrame], sections: Sequence[Section]) -> str:
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
        f'<div class="index">{index}</div>{legend}{"".join(s.html for s in sections)}</section>'
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
        f"<style>\n{CSS}{lot_css}</style></head><body>{body}<script>\n{JS}</script></body></html>"
    )


def write_report(report: Report, html_path: str | Path, figures_dir: str | Path) -> None:
    """Write the HTML and the figures, each file atomically (a temporary file renamed into place).

    Parameters
    ----------
    report
        What :func:`build_report` returned.
    html_path
        Where the page goes (``results/report.html``).
    figures_dir
        The figures' folder: ``forest.svg`` and ``plates/<plate>.svg`` (``plates/`` is made even when empty).
    """
    html_path, figures_dir = Path(html_path), Path(figures_dir)
    (figures_dir / "plates").mkdir(parents=True, exist_ok=True)
    for name, content in report.figures.items():
        write_text_atomic(figures_dir / name, lambda fh, text=content: fh.write(text))
    write_text_atomic(html_path, lambda fh: fh.write(report.html))
