"""``cr51-batch``: the scheduled (unattended) run of the pipeline, safe to start at any time.

Run it from the pipeline folder (the checkout, where the ``Snakefile`` is). It

1. takes an exclusive, non-blocking ``flock`` on ``<results_dir>/.cr51-batch.lock``: a second run
   on the same results folder exits at once (75);
2. takes an exclusive ``flock`` on ``.snakemake/cr51-batch.lock`` in the checkout, which covers what
   Snakemake's own lock covers (the checkout's ``.snakemake/``, shared by every run from this
   checkout, whatever its results folder), and waits until no Snakemake started by hand works in
   this checkout (``/proc``: a process running snakemake whose working folder is the checkout).
   Both waits together are bounded by ``--lock-wait`` seconds, then the run exits 75. Both locks
   are held until Snakemake has exited (their file descriptors are passed to it);
3. checks that the results folder is writable and has free space, and that the drop folder
   exists (an unmounted share must not empty the result tables);
4. clears a stale Snakemake lock left by a killed run (``snakemake --unlock``): holding the
   checkout lock with no live Snakemake in the checkout, no run can be using it;
5. runs ``snakemake --cores N --keep-going --rerun-incomplete [--configfile FILE ...] [--config
   KEY=VALUE ...]`` (an argument list, never a shell), its output going to
   ``<results_dir>/logs/runs/``;
6. makes sure the run has an audit record (``<results_dir>/audit.jsonl``), refused runs included
   (status ``refused``, the reason and the exit code), and prints one summary line, which also says
   when the audit log's chain was found broken (recorded, a new chain started: :mod:`cr51.audit`).

The folders are read as Snakemake reads the configuration: ``config/config.yaml``, then the
``--configfile`` files in order (nested keys merged), then the ``--config`` overrides, then the
schema's defaults. Exit codes (documented in docs/operations.md): see the ``EXIT_*`` constants.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import yaml

from . import archive, audit, runsummary
from .settings import with_defaults

EXIT_OK = 0  # the run completed (rejected and pending files are data, not failures)
EXIT_INBOX_SHRUNK = 65  # the drop folder lost most accepted plates (unmounted?): nothing was run
EXIT_NO_INPUT = 66  # the drop folder does not exist (not mounted?)
EXIT_FAILED = 70  # the pipeline failed (invalid config, a job failed, Snakemake killed)
EXIT_NOT_WRITABLE = 73  # the results folder cannot be created or written
EXIT_DISK_FULL = 74  # less free space in the results folder than --min-free-mb
EXIT_LOCKED = 75  # another run holds a lock (or works in this checkout): nothing was done, try later

#: The results folder's lock (one run per results folder, refused at once).
LOCK_NAME = ".cr51-batch.lock"
#: The checkout's lock, beside Snakemake's own state (one run per checkout, waited for).
CHECKOUT_LOCK = Path(".snakemake") / "cr51-batch.lock"
#: How long (seconds) a run waits by default for the checkout (another run, a hand-started Snakemake).
LOCK_WAIT = 1800.0
POLL_SECONDS = 0.5
PREFIX = "cr51 batch:"


class Stop(Exception):
    """The run stops before Snakemake starts: ``str(exc)`` is the message, ``code`` the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Folders:
    """The folders a run works on, from the configuration as Snakemake will read it, and the inbox
    guard's settings."""

    raw: Path
    results: Path
    min_share: float = 0.5
    confirm_cleanout: bool = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cr51-batch",
        description="Scheduled run of the cr51 pipeline: locks, checks, Snakemake, audit "
        "record, one summary line. Run it from the pipeline folder. Exit codes: "
        f"{EXIT_OK} ok, {EXIT_INBOX_SHRUNK} drop folder lost most accepted plates, "
        f"{EXIT_NO_INPUT} drop folder missing, {EXIT_FAILED} pipeline failed, "
        f"{EXIT_NOT_WRITABLE} results folder not writable, {EXIT_DISK_FULL} disk full, "
        f"{EXIT_LOCKED} another run holds the lock.",
    )
    parser.add_argument("--cores", type=int, default=2, help="cores for Snakemake (default 2)")
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        metavar="FILE",
        help="YAML files layered over config/config.yaml in order (nested keys merged), "
        "passed to snakemake --configfile as given",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (over the config files), passed to snakemake --config as given",
    )
    parser.add_argument(
        "--min-free-mb",
        type=float,
        default=100.0,
        help="refuse to run with less free space than this in the results folder (default 100)",
    )
    parser.add_argument(
        "--lock-wait",
        type=float,
        default=LOCK_WAIT,
        metavar="SECONDS",
        help="how long to wait for another run from this pipeline folder (cr51-batch or a "
        f"hand-started snakemake) before exiting {EXIT_LOCKED} (default {LOCK_WAIT:g})",
    )
    args = parser.parse_args(argv)
    bad = [item for item in args.config if "=" not in item or item.startswith("=")]
    if bad:
        parser.error(f"--config items must be KEY=VALUE: {', '.join(bad)}")
    if args.cores < 1:
        parser.error("--cores must be at least 1")
    if not args.lock_wait >= 0:
        parser.error("--lock-wait must be 0 or more seconds")
    if not Path("Snakefile").is_file():
        parser.error(f"no Snakefile in {os.getcwd()}: run cr51-batch from the pipeline folder")
    try:
        args.folders = folders(args.configfile, args.config)
    except ValueError as err:
        parser.error(str(err))
    return args


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` layered on it, nested mappings merged (as Snakemake layers config files)."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def load_yaml(path: str) -> dict[str, Any]:
    """A configuration file's mapping; ``ValueError`` with the reason if it cannot be one."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as err:
        raise ValueError(f"config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} does not hold a mapping of keys")
    return data


def folders(configfiles: list[str], overrides: list[str]) -> Folders:
    """The drop and results folders: config/config.yaml, the ``configfiles``, the ``--config`` overrides."""
    config = load_yaml("config/config.yaml")
    for path in configfiles:
        config = merge(config, load_yaml(path))
    for item in overrides:
        key, _, value = item.partition("=")
        if key in ("raw_dir", "results_dir"):
            config[key] = value
        elif key in ("inbox_min_share", "confirm_cleanout"):
            config[key] = yaml.safe_load(value)  # as Snakemake reads --config values
    config = with_defaults(config)  # the schema's defaults for keys the files leave out
    return Folders(
        Path(config["raw_dir"]),
        Path(config["results_dir"]),
        float(config["inbox_min_share"]),
        config["confirm_cleanout"] is True,
    )


def acquire_lock(results: Path) -> IO[str]:
    """Create ``results`` if needed and take its run lock; the open lock file holds it."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        lock = open(results / LOCK_NAME, "a", encoding="utf-8")
    except OSError as err:
        raise Stop(
            EXIT_NOT_WRITABLE, f"results folder {results} is not writable ({err.strerror}); nothing was run"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise Stop(EXIT_LOCKED, f"another run holds the lock on {results}; nothing was done") from None
    return lock


def runs_snakemake(argv: list[str]) -> bool:
    """Whether a command line runs Snakemake (``snakemake …``, ``python …/snakemake …``, ``python -m snakemake``)."""
    if any(os.path.basename(a) == "snakemake" for a in argv[:2]):
        return True
    return any(a == "-m" and b.split(".")[0] == "snakemake" for a, b in zip(argv, argv[1:]))


def live_snakemake(checkout: Path) -> list[int]:
    """The ids of live processes (other than this one) running Snakemake in ``checkout`` (from ``/proc``).

    A Snakemake process whose working folder cannot be read (another user's) counts as working here:
    a lock is never cleared on a guess.
    """
    here = os.path.realpath(checkout)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0")]
        except OSError:
            continue  # gone meanwhile
        if not runs_snakemake(argv):
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:
            cwd = here
        if cwd == here:
            found.append(int(entry.name))
    return sorted(found)


def acquire_checkout(checkout: Path, wait: float) -> IO[str]:
    """Take the checkout's lock and wait until no other Snakemake works in ``checkout``, within ``wait`` s.

    Raises :class:`Stop` (75) if either is still so when the time is up; the lock is held on return.
    """
    try:
        (checkout / CHECKOUT_LOCK.parent).mkdir(exist_ok=True)
        lock = open(checkout / CHECKOUT_LOCK, "a", encoding="utf-8")
    except OSError as err:
        raise Stop(
            EXIT_NOT_WRITABLE,
            f"pipeline folder {checkout} is not writable ({err.strerror}): Snakemake needs its .snakemake "
            "folder; nothing was run",
        ) from None
    deadline = time.monotonic() + wait
    held = False
    while True:
        if not held:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                pass
        live = live_snakemake(checkout) if held else []
        if held and not live:
            return lock
        if time.monotonic() >= deadline:
            lock.close()
            if not held:
                why = f"another cr51-batch run from the pipeline folder {checkout} still holds its lock"
            else:
                pids = ", ".join(map(str, live))
                why = (
                    f"a Snakemake run not started by cr51-batch (pid {pids}) still works in the pipeline "
                    f"folder {checkout}; its lock is never cleared while it runs"
                )
            raise Stop(EXIT_LOCKED, f"{why} after waiting {wait:g} s; nothing was done")
        time.sleep(max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))


def check_folders(dirs: Folders, min_free_mb: float) -> None:
    """Raise :class:`Stop` if the results folder is not writable or full, or the drop folder is missing."""
    try:
        with tempfile.TemporaryFile(dir=dirs.results):
            pass
    except OSError as err:
        raise Stop(
            EXIT_NOT_WRITABLE, f"results folder {dirs.results} is not writable ({err.strerror}); nothing was run"
        ) from None
    free_mb = shutil.disk_usage(dirs.results).free / 1e6
    if free_mb < min_free_mb:
        raise Stop(
            EXIT_DISK_FULL,
            f"disk full: {free_mb:.0f} MB free in results folder {dirs.results}, "
            f"{min_free_mb:g} MB needed; nothing was run",
        )
    if not dirs.raw.is_dir():
        raise Stop(EXIT_NO_INPUT, f"drop folder {dirs.raw} not found (not mounted?); nothing was run")


def snakemake_command(args: argparse.Namespace, *extra: str) -> list[str]:
    """The Snakemake command line (an argument list: nothing goes through a shell)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *extra]
    if args.configfile:
        cmd += ["--configfile", *args.configfile]
    return cmd + (["--config", *args.config] if args.config else [])


def has_stale_lock() -> bool:
    """Whether Snakemake's lock folder holds locks (stale when we hold the checkout lock and no
    other Snakemake works in the checkout)."""
    locks = Path(".snakemake/locks")
    return locks.is_dir() and any(locks.iterdir())


def run_snakemake(cmd: list[str], log: IO[str], locks: tuple[IO[str], ...], env: dict[str, str]) -> int:
    """Run ``cmd`` with output to ``log``; the run's locks stay held while it runs (even if we die)."""
    log.write(f"$ {cmd!r}\n")
    log.flush()
    fds = tuple(lock.fileno() for lock in locks)
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=fds, check=False)
    return proc.returncode


def summary(results: Path, record: audit.Record, seconds: float, problems: list[str] | None = None) -> str:
    """The one-line summary of a completed run (and what was wrong with the audit chain: ``problems``)."""
    counts = record.get("files") or {}
    plates_ok = len({r["plate"] for r in audit.files_rows(results) or [] if r["status"] == "ok"})
    new = len({e["plate"] for e in record.get("new", []) if e["plate"]})
    replaced = len({e["plate"] for e in record.get("replaced", []) if e["plate"]})
    files = ", ".join(f"{counts.get(s, 0)} {s}" for s in audit.STATUSES)
    return (
        f"{PREFIX} {plates_ok} plates ok ({new} new, {replaced} replaced); files: {files}; "
        f"results in {results}; {seconds:.1f} s" + runsummary.audit_note(results, problems or [])
    )


def batch(args: argparse.Namespace, dirs: Folders, locks: tuple[IO[str], ...], started: float) -> tuple[int, str]:
    """Checks, stale-lock recovery, the Snakemake run and its audit record: (exit code, summary)."""
    check_folders(dirs, args.min_free_mb)
    if message := archive.inbox_check(dirs.raw, dirs.results, dirs.min_share, dirs.confirm_cleanout):
        raise Stop(EXIT_INBOX_SHRUNK, message)  # main() records the refusal
    run_id = uuid.uuid4().hex
    env = {**os.environ, audit.RUN_ID_ENV: run_id}
    log_path = dirs.results / "logs" / "runs" / f"{datetime.now():%Y%m%dT%H%M%S}-{run_id[:8]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    note = ""
    with open(log_path, "w", encoding="utf-8") as log:
        if has_stale_lock():
            run_snakemake(snakemake_command(args, "--unlock"), log, locks, env)
            note = "cleared a stale Snakemake lock left by an interrupted run"
            env[audit.NOTE_ENV] = note
        cmd = snakemake_command(args, "--keep-going", "--rerun-incomplete")
        code = run_snakemake(cmd, log, locks, env)
    status = "ok" if code == 0 else "failed"
    records = audit.read_records(dirs.results)
    mine = [r for r in records if r.get("run_id") == run_id]
    # a broken chain found by Snakemake's handlers (or by its nothing-to-do summary) and recorded
    problems = [p for r in mine if r.get("event") == audit.CHAIN_BROKEN for p in r.get("problems", [])]
    record = next((r for r in reversed(mine) if "event" not in r), None)
    if record is None:  # Snakemake had nothing to do, or stopped before its handlers ran
        record = audit.build_record(
            dirs.results,
            status=status,
            start=started,
            config_hash=None,
            invoked_by="cr51-batch",
            logs=[str(log_path.resolve())],
            note=note or ("nothing to do" if code == 0 else f"snakemake exited with {code}"),
            exit_code=EXIT_OK if code == 0 else EXIT_FAILED,
            run_id=run_id,
        )
        problems += audit.append_record(dirs.results, record)
    seconds = time.time() - started
    if code != 0:
        return EXIT_FAILED, (
            f"{PREFIX} FAILED: the pipeline failed (exit {code}); see {log_path}; {seconds:.1f} s"
            + runsummary.audit_note(dirs.results, problems)
        )
    return EXIT_OK, summary(dirs.results, record, seconds, problems)


def record_refusal(results: Path, stop: Stop, started: float) -> list[str]:
    """The audit record of a run refused before Snakemake started (skipped if none can be written);
    the problems found in the audit chain."""
    try:
        record = audit.build_record(
            results, status=audit.REFUSED, start=started, config_hash=None, invoked_by="cr51-batch",
            note=str(stop), exit_code=stop.code,
        )  # fmt: skip
        return audit.append_record(results, record)
    except OSError:
        return []  # a results folder that cannot be written takes no record; the summary line says why


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cr51-batch``; prints one line and returns the exit code."""
    started = time.time()
    args = parse_args(argv)
    dirs: Folders = args.folders
    try:
        with contextlib.ExitStack() as held:
            results_lock = held.enter_context(acquire_lock(dirs.results))
            checkout_lock = held.enter_context(acquire_checkout(Path.cwd(), args.lock_wait))
            code, line = batch(args, dirs, (results_lock, checkout_lock), started)
    except Stop as stop:
        problems = record_refusal(dirs.results, stop, started)
        code, line = stop.code, f"{PREFIX} {stop}" + runsummary.audit_note(dirs.results, problems)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
