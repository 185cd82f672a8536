"""The whole-run page ``results/report.html`` and the SVG files beside it, built in the collect job.

Run summary, potency (forest plot, combined potencies, verdicts, vehicle controls), a plate
index, the plate sections (drawn in the batch jobs, :mod:`cr51.report.plate`) in plate order and
provenance. No external resource is referenced: the stylesheet, the figures (inline SVG) and a
little optional JavaScript are all inside the file.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
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
from ..tables import records, write_text_atomic
from .campaign_section import campaign_section
from .html import BIDI, INDEX_ROWS, capped, esc, map_distinct, more_rows, table, td
from .html import missing as _missing
from .names import campaign_page, lot_page, plate_page
from .potency_section import combined_groups, potency_section
from .trends_section import trends_section

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
class RunChanges:
    """What changed since the previous run, for the index's first section.

    ``files``: rows (file, status, plate, reason, change) of every file that is new, whose bytes
    changed, whose status changed, or that left the results since the previous run (``change``:
    ``new``, ``replaced``, ``status``, ``removed``); ``plates``: the plates accepted in this run (new, or
    a new version): plate → version. ``previous``: whether there was a record of a previous run.
    """

    files: list[dict]
    plates: dict[str, int]
    previous: bool


@dataclass(frozen=True)
class ReportInputs:
    """What the report reads: the final tables, the plate sections and the run's configuration."""

    tables: Mapping[str, pd.DataFrame]  # files, qc, potency, lots_differ, potency_combined, potency_combined_inputs
    config: Mapping[str, Any]  # the run's configuration (validated; shown in the provenance)
    templates: Sequence[str] = ()  # layout templates the plates included (hashed for provenance)
    changes: RunChanges | None = None  # what changed since the previous run (None: not known)
    audit_problems: Sequence[str] = ()  # what is wrong with the audit log's chain (cr51.audit.check_chain)


@dataclass(frozen=True)
class Report:
    """The report's HTML and its SVG figures ({path relative to the figures folder: svg})."""

    html: str
    figures: dict[str, str]


def build_report(inputs: ReportInputs) -> Report:
    """The whole report and the figures written beside it."""
    t = inputs.tables
    qc = t["qc"]
    refs = sorted({str(r) for r in qc["reference_lot"].dropna()})
    lots = set(t["potency"]["lot"].astype(str)) | set(refs)
    colours = lot_colours(lots, refs)
    settings = Settings.from_config(inputs.config)
    ci_level = settings.analysis.potency.ci_level
    groups = combined_groups(t["potency_combined"])
    forest = forest_svg(groups, refs, ci_level)
    body = "".join([
        _header(settings.raw_dir),
        this_run_section(inputs.changes, qc, inputs.audit_problems),
        summary_section(t["files"], qc),
        campaign_section(t, settings.analysis),
        pages_section(t),
        potency_section(t, forest, refs, colours, settings.analysis),
        plates_section(t),
        trends_section(t["trends"], settings.trends) if "trends" in t else "",
        history_section(t["plate_history"]) if "plate_history" in t else "",
        provenance_section(t["files"], inputs.config, inputs.templates),
    ])  # fmt: skip
    figures = {"forest.svg": forest_svg(groups, refs, ci_level, colours)}
    return Report(_page(body, colours), figures)


def _header(raw_dir: str) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in
                  (("this-run", "This run"), ("summary", "Files"), ("campaign", "Campaign"), ("potency", "Potency"), ("plates", "Plates"), ("trends", "Trends"), ("provenance", "Provenance")))  # fmt: skip
    return (
        "<header><h1>⁵¹Cr release assay — IVIG suppression of NK-cell lysis</h1>"
        f'<p class="muted">Drop folder <code>{esc(raw_dir)}</code> · generated {now} · cr51 {esc(__version__)}</p>'
        f"<nav>{nav}</nav></header>"
    )


def this_run_section(changes: RunChanges | None, qc: pd.DataFrame, audit_problems: Sequence[str] = ()) -> str:
    """What a technician checks after dropping files: the files new, replaced, changed in status or
    removed since the previous run, and the QC verdicts and flags of the plates accepted in this run;
    first, when the audit log's chain is damaged, what is wrong with it."""
    head = '<section id="this-run"><h2>This run</h2>'
    if audit_problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in audit_problems)
        head += (
            '<div class="warn" id="audit-damaged"><b>The audit log is damaged</b> — this run records what was found '
            f"in <code>audit.jsonl</code> and starts a new chain (docs/operations.md, the audit log):<ul>{items}</ul></div>"
        )
    if changes is None:
        return head + '<p class="muted">Not known: no comparison with the previous run.</p></section>'
    parts = [head]
    if not changes.previous:
        parts.append(
            '<p class="muted">No record of a previous run of this results folder: every file counts as new.</p>'
        )
    kinds = ("new", "replaced", "status", "removed")
    counts = {k: sum(1 for r in changes.files if r["change"].startswith(k)) for k in kinds}
    labels = {"new": "files new", "replaced": "files replaced", "status": "status changed", "removed": "files removed"}
    cards = [(labels[k], counts[k], "") for k in kinds] + [("plates accepted", len(changes.plates), "ok")]
    parts.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card {c}" data-change="{esc(k)}"><div class="big">{n}</div><div>{esc(k)}</div></div>'
            for k, n, c in cards
        )
        + "</div>"
    )
    if not changes.files and not changes.plates:
        parts.append('<p class="okmsg">Nothing changed since the previous run.</p>')
    if changes.files:
        rows = [
            f'<tr data-file="{esc(r["file"])}"><td><code>{esc(r["file"])}</code></td><td>{esc(r["change"])}</td>'
            f'<td><span class="badge {esc(r["status"])}">{esc(r["status"])}</span></td><td>{esc(r["plate"])}</td>'
            f'<td class="reason">{esc(r["reason"])}</td></tr>'
            for r in changes.files
        ]
        n = len(rows)
        rows, more = capped(rows, "files.csv")
        tab = table(["file", "change", "status", "plate", "reason"], rows, ' data-table="changes"') + more
        parts.append(f"<details{' open' if n <= 20 else ''}><summary>Files ({n})</summary>{tab}</details>")
    if changes.plates:
        by_plate = {str(r["plate"]): r for r in records(qc)}
        rows = []
        for plate, version in changes.plates.items():
            q = by_plate.get(plate)
            if q is None:
                continue
            flags = "; ".join(FLAGS.get(f, f) for f in str(q["flags"]).split(";") if f and not _missing(q["flags"]))
            rows.append(
                f'<tr data-plate="{esc(plate)}"><td><a href="{esc(plate_page(plate))}">{esc(plate)}</a></td>'
                f"<td>{esc(version)}</td><td>{esc(q['date'])}</td><td>{esc(q['donor'])}</td>"
                f'<td><span class="badge {esc(q["status"])}">{esc(q["status"])}</span></td><td class="reason">{esc(flags)}</td></tr>'
            )
        n = len(rows)
        rows, more = capped(rows, "qc.csv")
        tab = table(["plate", "version", "date", "donor", "QC", "flags"], rows, ' data-table="new_plates"') + more
        opened = " open" if n <= 20 else ""
        parts.append(f"<details{opened}><summary>Plates accepted in this run ({n})</summary>{tab}</details>")
    parts.append("</section>")
    return "".join(parts)


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
        rows, more = capped(rows, "files.csv")
        problems = (
            "<h3>Files not accepted, not read, retracted or gone</h3>"
            + table(["file", "status", "plate", "reason", "what to do"], rows, ' data-table="files"')
            + more
        )
    failed = qc[qc["status"] != "pass"]
    fail_html = ""
    if not failed.empty:
        items, more = capped(
            [
                f'<li><a href="{esc(plate_page(str(r["plate"])))}">{esc(r["plate"])}</a>: '
                + esc("; ".join(FLAGS.get(f, f) for f in str(r["flags"]).split(";") if f))
                + "</li>"
                for r in failed.to_dict("records")
            ],
            "qc.csv",
        )
        fail_html = f"<h3>Plates that failed QC (not used for potency)</h3><ul>{''.join(items)}</ul>{more}"
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
    rows, more = capped(rows, "plate_history.csv")
    return (
        '<section id="history"><h2>Re-exported plates</h2><p>A corrected export or layout replaced these plates\' '
        "results; the superseded versions stay in the archive and in <code>plate_history.csv</code> with the "
        "numbers they gave.</p>" + table(headers, rows, ' data-table="plate_history"') + more + "</section>"
    )


#: The plate index's columns (JSON rows in the page; ``page`` is the link, not shown as a column).
INDEX_COLUMNS = ("plate", "page", "date", "donor", "reference", "qc", "flags", "lots with RP")


def pages_section(t: Mapping[str, pd.DataFrame]) -> str:
    """Links to the campaign pages and the lot pages (written beside the index by the collect job)."""
    camps = sorted(set(t["campaign_tests"]["campaign"].astype(str))) if "campaign_tests" in t else []
    lots = sorted(set(t["potency"]["lot"].dropna().astype(str)) | set(t["qc"]["reference_lot"].dropna().astype(str)))
    if not camps and not lots:
        return ""

    def links(ids: list[str], page: Any) -> str:
        return " · ".join(f'<a href="{esc(page(i))}">{esc(i)}</a>' for i in ids) or "–"

    return (
        '<section id="pages"><h2>Campaign and lot pages</h2>'
        f"<p>Campaigns: {links(camps, campaign_page)}</p><p>Lots (each lot's potency record, printable): "
        f"{links(lots, lot_page)}</p></section>"
    )


#: The qc.csv columns of the plate index besides the plate.
INDEX_QC = ("date", "donor", "reference_lot", "status", "flags")


def plate_index_rows(t: Mapping[str, pd.DataFrame]) -> list[list[str]]:
    """One row per accepted plate (qc.csv order: by plate): the values of :data:`INDEX_COLUMNS` as text."""
    qc = t["qc"]
    pot = t["potency"]
    by_plate = (pot["status"] == "ok").groupby(pot["plate"], sort=False)
    n_rp = {p: f"{int(k)}/{int(n)}" for p, k, n in zip(by_plate.sum().index, by_plate.sum(), by_plate.size())}

    def text(v: object) -> str:  # bidirectional controls shown as their code, as esc() shows them
        return "" if _missing(v) else BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", str(v))

    broken: dict[str, list[str]] = {}
    trends = t.get("trends")
    if trends is not None and len(trends):
        hit = trends[trends["rule"].fillna("").astype(str) != ""]
        counts: dict[str, dict[str, int]] = {}
        for plate, rule in zip(hit["plate"], hit["rule"]):
            for r in str(rule).replace(";", ",").split(","):
                if r.strip():
                    counts.setdefault(str(plate), {}).setdefault(r.strip(), 0)
                    counts[str(plate)][r.strip()] += 1
        for plate, rules in counts.items():  # compact: the Trends section and trends.csv name the quantities
            broken[plate] = [f"trend {r}" + (f" ×{n}" if n > 1 else "") for r, n in sorted(rules.items())]

    def flags(plate: object, listed: str) -> str:
        return ", ".join([f for f in listed.split(";") if f] + broken.get(str(plate), []))

    plates = qc["plate"].tolist()
    # each column's texts: the dates, donors, statuses and flags of 10,000 plates repeat a few hundred texts
    date, donor, ref, status, listed = (map_distinct(text, qc[c].tolist()) for c in INDEX_QC)
    return [
        [text(p), plate_page(str(p)), d, dn, rf, st, flags(p, fl), n_rp.get(p, "–")]
        for p, d, dn, rf, st, fl in zip(plates, date, donor, ref, status, listed)
    ]


def json_script(value: object) -> str:
    """JSON for a ``<script type="application/json">`` element (``<``, ``>`` and ``&`` escaped: no text in
    it can close the element)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def plates_section(t: Mapping[str, pd.DataFrame]) -> str:
    """The plate index: every accepted plate, with a link to its page (``plates/<name>.html``); the rows
    are data in the page, drawn (filtered, sorted, 100 at a time) by the page's script."""
    rows = plate_index_rows(t)
    headers = [c for c in INDEX_COLUMNS if c != "page"]
    index = table(headers, [], ' id="plate-index"')
    return (
        f'<section id="plates"><h2>Plates ({len(rows)})</h2>'
        "<p>Each plate's map, QC against its limits, curves, titration, potency and files are on its own page. "
        "Click a column to sort; the filter matches any column.</p>"
        f'<div id="plate-tools"></div><div class="index">{index}</div>'
        '<noscript><p class="muted">The plate list needs JavaScript; the same rows are in <code>qc.csv</code>.</p></noscript>'
        f'<script type="application/json" id="plate-data" data-columns="{esc(json.dumps(list(INDEX_COLUMNS)))}">'
        f"{json_script(rows)}</script></section>"
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
        for r in files.head(INDEX_ROWS).to_dict("records")  # only the rows shown (20,000 at 10,000 plates)
    ]
    n_files = len(files)
    more = more_rows(n_files, "files.csv")
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
        f"<details><summary>Input files and their sha256 ({n_files}; each plate's files are also on its page)</summary>"
        f"{table(['file', 'status', 'bytes', 'sha256'], frows, ' data-table=sha256')}{more}</details></section>"
    )


def document(
    title: str, body: str, colours: Mapping[str, str] | None = None, *, extra_css: str = "", body_class: str = ""
) -> str:
    """A whole page: the report's stylesheet (with a colour per lot of ``colours``, then ``extra_css``)
    and script inline, no external resource; ``body_class``: the body's class (none when empty). The
    one shell of every page (the index, the plate, lot and campaign pages)."""
    lot_css = "".join(f".{lot_class(lot)}{{color:{c}}}" for lot, c in sorted((colours or {}).items()))
    attrs = f' class="{esc(body_class)}"' if body_class else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        f"<style>\n{CSS}{lot_css}{extra_css}</style></head><body{attrs}>{body}<script>\n{JS}</script></body></html>"
    )


def _page(body: str, colours: Mapping[str, str]) -> str:
    return document("51Cr release assay report", body, colours)


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
