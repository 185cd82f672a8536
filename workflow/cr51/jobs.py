"""Snakemake plumbing: run a ``script:`` job (log to the rule's log file, record versions and
failures), and let the Snakemake process exit as soon as its work is done."""

from __future__ import annotations

import logging
import os
import platform
import threading
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


#: Snakemake's scheduler module: :func:`cancel_reevaluation_timers` cancels the timers it started.
SCHEDULER_MODULE = "snakemake.scheduling.job_scheduler"


def cancel_reevaluation_timers() -> int:
    """Cancel Snakemake's pending scheduler re-evaluation timers; return how many.

    After every round of job submissions Snakemake's job rate limiter starts a (non-daemon)
    ``threading.Timer`` of ``--max-jobs-per-timespan``'s timespan (default 1 s) to look at the
    queue again. After the last round (the ``all`` job) nothing is left to schedule, but the
    interpreter still waits for that timer before it exits: every run ended ~1 s after its work.
    Called from the ``onsuccess``/``onerror`` handlers, when scheduling is over; only timers created
    by Snakemake's scheduler module are touched.
    """
    timers = [
        t
        for t in threading.enumerate()
        if isinstance(t, threading.Timer) and getattr(t.function, "__module__", None) == SCHEDULER_MODULE
    ]
    for t in timers:
        t.cancel()
    return len(timers)
