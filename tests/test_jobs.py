"""Snakemake plumbing in cr51.jobs: the exit-delay workaround targets what Snakemake really does."""

import inspect
import threading

from snakemake.scheduling.job_scheduler import JobScheduler

from cr51.jobs import SCHEDULER_MODULE, cancel_reevaluation_timers


def _noop() -> None:
    pass


def test_snakemake_still_reevaluates_with_a_timer_from_that_module():
    # the workaround cancels threading.Timer objects whose function comes from this module; if the
    # pinned Snakemake stops doing this, the workaround is dead code and this test says so
    assert JobScheduler.__module__ == SCHEDULER_MODULE
    source = inspect.getsource(JobScheduler._schedule_reevalutation)
    assert "threading.Timer(" in source and "lambda" in source


def test_cancels_the_schedulers_timers_and_leaves_others():
    def scheduler_callback() -> None:
        pass

    scheduler_callback.__module__ = SCHEDULER_MODULE
    theirs = threading.Timer(60, scheduler_callback)
    ours = threading.Timer(60, _noop)
    theirs.start()
    ours.start()
    try:
        assert cancel_reevaluation_timers() == 1
        theirs.join(timeout=5)
        assert not theirs.is_alive()  # the interpreter no longer waits for it at exit
        assert ours.is_alive() and not ours.finished.is_set()
    finally:
        ours.cancel()
        theirs.cancel()
