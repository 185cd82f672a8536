"""Snakemake script: every plate's potency -> combined potency per lot (Ph. Eur. 5.3)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from cr51.combination import combine_plates
from cr51.jobs import run_job
from cr51.tables import read_table, write_table


def main(smk):
    combined, inputs = combine_plates(read_table(smk.input.potency), read_table(smk.input.qc), smk.params.settings)
    write_table(combined, smk.output.combined)
    write_table(inputs, smk.output.inputs)


run_job(snakemake, main)  # noqa: F821
