"""Snakemake script: the final tables + the batches' plate sections -> report.html and figures/*.svg."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.jobs import run_job
from cr51.report import ReportInputs, build_report, split_sections, write_report
from cr51.tables import read_table

TABLES = ("files", "qc", "potency", "lots_differ", "potency_combined", "potency_combined_inputs")


def main(smk):
    sections = {}
    for path in smk.input.sections:
        sections.update(split_sections(Path(path).read_text(encoding="utf-8")))
    tables = {name: read_table(smk.input[name]) for name in TABLES}
    inputs = ReportInputs(tables, sections, dict(smk.params.config), smk.params.templates)
    write_report(build_report(inputs), smk.output.html, Path(smk.output.forest).parent)


run_job(snakemake, main)  # noqa: F821
