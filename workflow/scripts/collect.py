"""Snakemake script: batch outputs -> the result tables (files.csv lists every raw file), the
combined potency per lot (Ph. Eur. 5.3), the campaign tables (lots compared across plates) and the
index page (report.html + figures/forest.svg); plate pages no plate owns any more are removed."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51 import __version__
from cr51.audit import check_chain
from cr51.batch import load_batches
from cr51.campaign import analyse
from cr51.collect import collect, plate_history, products, prune_pages, prune_plate_files, run_changes
from cr51.combination import combine_plates
from cr51.jobs import run_job, side_by_side
from cr51.report import (
    ReportInputs,
    build_campaign_pages,
    build_lot_pages,
    build_report,
    write_pages,
    write_report,
    write_workbook,
)
from cr51.report.lot_page import now_text
from cr51.schema import CAMPAIGN_TABLES, PLATE_HISTORY, POTENCY_COMBINED, POTENCY_COMBINED_INPUTS, TRENDS
from cr51.settings import Analysis, Settings
from cr51.tables import read_table, write_table
from cr51.trends import trends_table

REPORTED = ("files", "qc", "potency", "lots_differ", "potency_combined", "potency_combined_inputs", "plate_history",
            "trends")  # fmt: skip
CAMPAIGN = tuple(t.name for t in CAMPAIGN_TABLES)
#: The workbook's sheets: the tables whose rows grow with lots and campaigns, not with plates (a
#: workbook of every plate's rows took 43 s of CPU at 10,000 plates; those rows are in the CSVs).
WORKBOOK = ("potency_combined", *CAMPAIGN[1:])


def main(smk):
    batches = load_batches(list(smk.input.batches))
    result = collect(batches, smk.params.others, smk.params.raw_dir, smk.params.max_export_bytes)
    for name in smk.params.tables:
        result.write(name, smk.output[name])
    lot_products, files = products(batches), result.files
    removed = prune_plate_files(smk.params.results, batches)
    if removed:
        print(f"removed {len(removed)} page/figure file(s) of plates no longer in the results", file=sys.stderr)
    del result
    for b in batches:  # their rows are written: freed (260 MB at 10,000 plates) before the job forks
        b.rows.clear()
    # everything after the plate tables reads them back: the numbers shown are the numbers written
    qc, potency = read_table(smk.output.qc), read_table(smk.output.potency)
    read_back = {"qc": qc.copy(), "potency": potency.copy()}  # shown below as read (not re-read: 21 MB)
    settings = Analysis.from_config(smk.params.settings)
    now, parallel = time.time(), smk.threads > 1

    def lots_and_campaigns():
        combined = combine_plates(potency, qc, settings)
        write_table(combined[0], smk.output.combined, POTENCY_COMBINED)
        write_table(combined[1], smk.output.combined_inputs, POTENCY_COMBINED_INPUTS)
        campaign = analyse(potency, qc, settings, lot_products).named()
        for table in CAMPAIGN_TABLES:
            write_table(campaign[table.name], smk.output[table.name], table)

    def history_and_trends():
        history = plate_history(smk.params.results, batches, potency, qc, now)
        write_table(history, smk.output.history, PLATE_HISTORY)
        fits = read_table(smk.output.fits)
        trends = trends_table(qc, fits, Settings.from_config(smk.params.config).trends, settings.fit.models[0])
        write_table(trends, smk.output.trends, TRENDS)

    # independent parts, each writing its own files: on both cores when the job has two threads
    side_by_side(lots_and_campaigns, history_and_trends, parallel)
    accepted = set(qc["plate"].astype(str))
    versions = {p: v for b in batches for p, v in b.versions.items() if p in accepted}
    changes = run_changes(smk.params.results, files, versions)
    names = {"potency_combined": "combined", "potency_combined_inputs": "combined_inputs", "plate_history": "history"}
    shown = {
        name: read_back[name] if name in read_back else read_table(smk.output[names.get(name, name)])
        for name in REPORTED + CAMPAIGN
    }
    # a damaged audit log (this run's record says so too); the job cannot tell a first run from a log
    # deleted with its head, so that case is left to the summary line (since: no plate admitted before)
    problems = check_chain(smk.params.results, since="0000").problems
    inputs = ReportInputs(shown, dict(smk.params.config), list(smk.input.templates), changes, problems)
    generated = now_text()

    def lot_and_campaign_pages():  # one page per lot and per campaign (written only when their bytes change)
        pages = build_lot_pages(shown, settings, generated=generated)
        pages.update(build_campaign_pages(shown, settings, generated=generated))
        write_pages(pages, smk.params.results)
        prune_pages(smk.params.results, set(pages))

    def index_and_workbook():  # the index page and the summary workbook
        write_report(build_report(inputs), smk.output.html, Path(smk.output.forest).parent)
        summary = {name: shown[name] for name in WORKBOOK}
        write_workbook(summary, smk.output.workbook, version=__version__, run_time=generated)

    side_by_side(lot_and_campaign_pages, index_and_workbook, parallel)


run_job(snakemake, main, gc_paused=True)  # noqa: F821 - the history stays loaded until the job ends
