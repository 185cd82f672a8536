"""Snakemake script: one batch of plates -> its files, wells, lysis, qc, fits, potency tables and plates.html."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.batch import PlateCache, process_batch
from cr51.jobs import run_job
from cr51.plate import PlateInput
from cr51.tables import write_table


def main(smk):
    plates = [PlateInput(**{**p, "includes": tuple(p["includes"])}) for p in smk.params.plates]
    cache = PlateCache(smk.params.cache, smk.params.settings)
    out = process_batch(plates, smk.params.settings, cache)
    for name, df in out.tables.items():
        write_table(df, smk.output[name], safe=False)
    Path(smk.output.plates).write_text(out.plates_html, encoding="utf-8")


run_job(snakemake, main)  # noqa: F821
