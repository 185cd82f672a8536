"""Snakemake plumbing: run a ``script:`` job (log to the rule's log file, record versions and
failures, one BLAS thread), and let the Snakemake process exit as soon as its work is done.

BLAS and OpenMP run single-threaded in every job, so that a number does not depend on how many
threads a library chose under the load of the moment (docs/operations.md, "Bit-identical reruns").
OpenBLAS reads ``OPENBLAS_NUM_THREADS`` (MKL ``MKL_NUM_THREADS``, OpenMP ``OMP_NUM_THREADS``) once,
when numpy first loads it: :func:`pin_threads` is therefore called when the workflow is parsed
(``rules/common.smk``), before Snakemake starts any job, so every job process — a script job is a
new Python process, on a cluster node too, where the workflow is parsed again — inherits the
variables before it imports numpy; :func:`run_job` also sets the thread count of every OpenBLAS
already loaded (``openblas_set_num_threads``) and logs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import re
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from . import __version__
from .archive import paused_gc

#: The environment variables that set the thread count of BLAS/OpenMP libraries (read when they load).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: OpenBLAS's thread functions, as plain OpenBLAS and the scipy-openblas builds in numpy/scipy wheels name them.
_OPENBLAS = (("openblas_get_num_threads", "openblas_set_num_threads"),
             ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
             ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"))  # fmt: skip


def pin_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """One thread for BLAS and OpenMP in this process and the processes it starts (before numpy loads)."""
    for name in THREAD_VARIABLES:
        environ[name] = "1"


def _openblas_libraries() -> list[str]:
    """Paths of the OpenBLAS libraries loaded in this process (``/proc/self/maps``; none elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            maps = fh.read()
    except OSError:
        return []
    return sorted(set(re.findall(r"(/\S*openblas\S*\.so[\w.]*)", maps)))


def blas_threads(set_to: int | None = None) -> dict[str, int]:
    """``{library: threads}`` for every OpenBLAS loaded in this process, after setting the count to
    ``set_to`` (if given)."""
    out = {}
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, put in _OPENBLAS:
            if hasattr(lib, get):
                if set_to is not None:
                    getattr(lib, put)(set_to)
                out[os.path.basename(path)] = int(getattr(lib, get)())
                break
    return out


def run_job(smk: Any, main: Callable[[Any], None], gc_paused: bool = False) -> None:
    """Call ``main(smk)`` with logging to ``smk.log[0]``; a failure is logged, then re-raised.

    ``gc_paused``: Python's cyclic garbage collector paused while ``main`` runs (restored after), for
    a job that loads the whole history and frees it only when it ends (``collect``: its full
    collections walked every loaded object, ~1 s at 10,000 plates, and freed ~100 objects; its peak
    RSS was the same without them). Not for the batch jobs, whose fits leave cyclic garbage."""
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
    pin_threads()  # for the processes this job starts; libraries already loaded are set below
    threads = blas_threads(set_to=1)
    log.info("BLAS threads: %s", ", ".join(f"{k} {v}" for k, v in threads.items()) or "no OpenBLAS loaded")
    if gc_paused:
        log.info("cyclic garbage collector paused for this job")
    with paused_gc() if gc_paused else contextlib.nullcontext():
        try:
            main(smk)
        except Exception:
            log.exception("job failed")
            raise
    log.info("done")


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr, *(getattr(h, "stream", None) for h in logging.getLogger().handlers)):
        if stream is not None:
            stream.flush()


def side_by_side(first: Callable[[], None], second: Callable[[], None], parallel: bool) -> None:
    """Run two independent parts of a job, each writing its own files: with ``parallel``, ``first``
    in a forked child process while ``second`` runs here (a job given two threads: ``collect``'s
    history-wide analyses on both cores), else one after the other (``second`` first). Returns when
    both are done; a failure of either raises here once both have ended (the child's traceback is in
    the job's log). The child shares what was loaded before the fork (copy on write) and leaves
    nothing but its files: it ends with ``os._exit``, without Python's clean-up."""
    if not parallel:
        second()
        first()
        return
    log = logging.getLogger("cr51.job")
    _flush_streams()  # else what is buffered is written twice
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            first()
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent by the exit code
            log.exception("the forked part of the job failed")
        finally:
            _flush_streams()
            os._exit(code)
    log.info("two parts side by side: %s in process %d, %s here", first.__name__, pid, second.__name__)
    try:
        second()
    finally:
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"the forked part of the job failed (exit status {status}); its traceback is in the job's log"
        )


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
