"""Snakemake script: batch tables -> the result tables (files.csv lists every raw file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.collect import collect
from cr51.jobs import run_job
from cr51.tables import write_table


def main(smk):
    parts = {name: list(smk.input[name]) for name in smk.output.keys()}
    tables = collect(parts, smk.params.others, smk.params.raw_dir, smk.params.max_export_bytes)
    for name, df in tables.items():
        write_table(df, smk.output[name])


run_job(snakemake, main)  # noqa: F821
