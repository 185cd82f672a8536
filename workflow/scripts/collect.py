"""Snakemake script: batch outputs -> the result tables (files.csv lists every raw file), the
combined potency per lot (Ph. Eur. 5.3), the campaign tables (lots compared across plates) and the
report (report.html + figures/*.svg)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.batch import load_batches
from cr51.campaign import analyse_run, products_of
from cr51.collect import collect, plate_history
from cr51.combination import combine_plates
from cr51.jobs import run_job
from cr51.report import ReportInputs, build_report, write_report
from cr51.schema import CAMPAIGN_TABLES, PLATE_HISTORY, POTENCY_COMBINED, POTENCY_COMBINED_INPUTS
from cr51.settings import Analysis
from cr51.tables import read_table, write_table

REPORTED = ("files", "qc", "potency", "lots_differ", "potency_combined", "potency_combined_inputs", "plate_history")
CAMPAIGN = tuple(t.name for t in CAMPAIGN_TABLES)


def main(smk):
    batches = load_batches(list(smk.input.batches))
    result = collect(batches, smk.params.others, smk.params.raw_dir, smk.params.max_export_bytes)
    for name in smk.params.tables:
        result.write(name, smk.output[name])
    settings = Analysis.from_config(smk.params.settings)
    combined = combine_plates(result.tables["potency"], result.tables["qc"], settings)
    write_table(combined[0], smk.output.combined, POTENCY_COMBINED)
    write_table(combined[1], smk.output.combined_inputs, POTENCY_COMBINED_INPUTS)
    history = plate_history(smk.params.results, batches, result.tables["potency"], result.tables["qc"], time.time())
    write_table(history, smk.output.history, PLATE_HISTORY)
    products = products_of([b.tables["wells"] for b in batches])
    campaign = analyse_run(result.tables["potency"], result.tables["qc"], settings, products)
    for table in CAMPAIGN_TABLES:
        write_table(campaign[table.name], smk.output[table.name], table)
    # the report shows what the CSVs say: read back exactly what was written (the small tables it shows)
    names = {"potency_combined": "combined", "potency_combined_inputs": "combined_inputs", "plate_history": "history"}
    shown = {name: read_table(smk.output[names.get(name, name)]) for name in REPORTED + CAMPAIGN}
    sections = {plate: section for b in batches for plate, section in b.sections.items()}
    inputs = ReportInputs(shown, sections, dict(smk.params.config), list(smk.input.templates))
    write_report(build_report(inputs), smk.output.html, Path(smk.output.forest).parent)


run_job(snakemake, main)  # noqa: F821
