"""Snakemake script: raw files of one batch -> files, wells, lysis and qc tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.jobs import run_job
from cr51.plate import PlateInput, ingest_batch
from cr51.tables import write_table


def main(smk):
    plates = [PlateInput(**p) for p in smk.params.plates]
    for name, df in ingest_batch(plates, smk.params.settings).items():
        write_table(df, smk.output[name], safe=False)


run_job(snakemake, main)  # noqa: F821
