"""Snakemake script: one batch of plates -> its rendered table rows (one file) and its plates' pages."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from dataclasses import replace

from cr51.archive import fallbacks
from cr51.batch import PlateCache, load_previous, process_batch, save_batch
from cr51.jobs import run_job
from cr51.plate import PlateInput
from cr51.settings import Analysis


def main(smk):
    plates = [PlateInput.from_params(p) for p in smk.params.plates]
    # a re-export the pipeline refuses keeps the plate's accepted version (archive/history.json)
    kept = fallbacks(smk.params.results, {p.name: p.version for p in plates})
    plates = [replace(p, fallback=kept.get(p.name)) for p in plates]
    settings = Analysis.from_config(smk.params.settings)
    cache = PlateCache(smk.params.cache, settings)
    # the plates whose sources and pages did not change are taken over from the batch's last output
    previous = load_previous(smk.params.cache, smk.output.batch)
    out = process_batch(plates, settings, cache, smk.params.results, previous, smk.params.max_plate_seconds)
    save_batch(out, smk.output.batch, keep_in=smk.params.cache)


run_job(snakemake, main)  # noqa: F821
