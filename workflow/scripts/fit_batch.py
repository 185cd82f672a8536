"""Snakemake script: one batch's wells + QC -> per-lot fits, potency and lot-difference tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.analysis import analyse_batch
from cr51.jobs import run_job
from cr51.tables import read_table, write_table


def main(smk):
    tables = analyse_batch(read_table(smk.input.wells), read_table(smk.input.qc), smk.params.settings)
    for name, df in tables.items():
        write_table(df, smk.output[name], safe=False)


run_job(snakemake, main)  # noqa: F821
