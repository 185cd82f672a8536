"""Snakemake script: one batch of plates -> its tables, rendered rows and report sections (one file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.batch import PlateCache, process_batch, save_batch
from cr51.jobs import run_job
from cr51.plate import PlateInput


def main(smk):
    plates = [PlateInput(**{**p, "includes": tuple(p["includes"])}) for p in smk.params.plates]
    cache = PlateCache(smk.params.cache, smk.params.settings)
    save_batch(process_batch(plates, smk.params.settings, cache), smk.output.batch)


run_job(snakemake, main)  # noqa: F821
