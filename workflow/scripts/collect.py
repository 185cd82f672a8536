"""Snakemake script: batch tables -> the result tables (files.csv lists every raw file), the
combined potency per lot (Ph. Eur. 5.3) and the report (report.html + figures/*.svg)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.collect import collect
from cr51.combination import combine_plates
from cr51.jobs import run_job
from cr51.report import ReportInputs, build_report, split_sections, write_report
from cr51.tables import read_table, write_table

REPORTED = ("files", "qc", "potency", "lots_differ", "potency_combined", "potency_combined_inputs")


def main(smk):
    parts = {name: list(smk.input[name]) for name in smk.params.tables}
    tables = collect(parts, smk.params.others, smk.params.raw_dir, smk.params.max_export_bytes)
    tables["potency_combined"], tables["potency_combined_inputs"] = combine_plates(
        tables["potency"], tables["qc"], smk.params.settings
    )
    names = {"potency_combined": "combined", "potency_combined_inputs": "combined_inputs"}
    for name, df in tables.items():
        write_table(df, smk.output[names.get(name, name)])
    # the report shows what the CSVs say: read back exactly what was written (the small tables it shows)
    shown = {name: read_table(smk.output[names.get(name, name)]) for name in REPORTED}
    sections = {}
    for path in smk.input.sections:
        sections.update(split_sections(Path(path).read_text(encoding="utf-8")))
    inputs = ReportInputs(shown, sections, dict(smk.params.config), list(smk.input.templates))
    write_report(build_report(inputs), smk.output.html, Path(smk.output.forest).parent)


run_job(snakemake, main)  # noqa: F821
