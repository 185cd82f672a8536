"""Run a Snakemake ``script:`` job: log to the rule's log file, record versions and failures."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from typing import Any

from . import __version__


def run_job(smk: Any, main: Callable[[Any], None]) -> None:
    """Call ``main(smk)`` with logging to ``smk.log[0]``; a failure is logged, then re-raised."""
    logging.basicConfig(
        filename=smk.log[0],
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    log = logging.getLogger("cr51.job")
    log.info("cr51 %s, Python %s, rule %s", __version__, platform.python_version(), smk.rule)
    if "SLURM_JOB_ID" in os.environ:  # the job runs under SLURM: record which job
        log.info("SLURM_JOB_ID=%s", os.environ["SLURM_JOB_ID"])
    try:
        main(smk)
    except Exception:
        log.exception("job failed")
        raise
    log.info("done")
