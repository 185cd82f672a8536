"""Chaos test of the pipeline's repair (issue 14): damage and kill -9, then reruns, then the same tables.

Not part of the test suite (tests/test_chaos.py runs a small version); run it by hand:

    .venv/bin/python tools/chaos.py                        # 200 plates, 100 corruptions, 10 kills
    .venv/bin/python tools/chaos.py --plates 20 --corruptions 10 --kills 2 --json /tmp/chaos.json

It simulates ``--plates`` plates (tools/bench.py's kind) into a drop folder, runs ``cr51-batch`` once
on a fresh results folder (the clean run) and keeps the sha256 of every ``results/*.csv``, then

* ``--corruptions`` times: damages one file of the results folder, chosen at random among the
  plate-cache entries (``cache/*/*.jsonl``), the batch files (``batches/*.jsonl``, ``batches/index.json``)
  and the result tables (``*.csv``), in one of the ways in :data:`DAMAGE` (bytes flipped, truncated,
  emptied, deleted, garbage appended, replaced by another file of its kind; a damaged cache entry
  matters when its batch is recomputed, so its batch file is removed too), then reruns ``cr51-batch``
  until it exits 0 (at most ``--max-reruns`` times) and compares every table with the clean run's;
  the results folder is put back as the clean run left it before the next trial, so the trials are
  independent;
* ``--kills`` times: starts the whole run on a fresh results folder, sends SIGKILL to its process
  group (cr51-batch, Snakemake and its jobs) at a random moment within the clean run's duration
  (a run that ends before it, the load having dropped, is started again with half the delay, up to
  :data:`KILL_ATTEMPTS` runs), then reruns until exit 0 and compares.

``plate_history.csv`` says *when* a results folder admitted and accepted each plate: in the kill
trials (a new results folder) its times are compared as set or unset, everything else byte for
byte. Exit 0 when every final table set equals the clean run's, 1 otherwise; the outcome of every
trial is printed (and written to ``--json``): repaired, in how many runs, or which tables differ.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "tools"))

from bench import write_plates  # noqa: E402  (tools/bench.py, beside this file)

#: plate_history.csv columns that say when a results folder admitted, accepted or replaced a version.
HISTORY_TIMES = ("admitted_at", "accepted_at", "replaced_at")
#: The kinds of damage, each a function (path, rng, other file of the same kind or None) -> None.
DAMAGE = ("flip", "truncate", "empty", "delete", "append", "swap")
RUN_TIMEOUT = 1800
#: Whole runs started per kill trial at most: one that finishes before its kill moment is started
#: again with half the delay.
KILL_ATTEMPTS = 4


def flip(path: Path, rng: random.Random, other: Path | None) -> None:
    """1-3 bytes changed at random places."""
    data = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 3)):
        if data:
            i = rng.randrange(len(data))
            data[i] = (data[i] + rng.randint(1, 255)) % 256
    path.write_bytes(bytes(data))


def truncate(path: Path, rng: random.Random, other: Path | None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(max(1, len(data)))])


def empty(path: Path, rng: random.Random, other: Path | None) -> None:
    path.write_bytes(b"")


def delete(path: Path, rng: random.Random, other: Path | None) -> None:
    path.unlink()


def append(path: Path, rng: random.Random, other: Path | None) -> None:
    with open(path, "ab") as fh:
        fh.write(rng.randbytes(rng.randint(1, 64)))


def swap(path: Path, rng: random.Random, other: Path | None) -> None:
    """Replaced by another file of its kind (a misdirected write: a valid file, the wrong one)."""
    if other is None:
        return flip(path, rng, other)
    shutil.copyfile(other, path)


def pipeline_copy(dest: Path) -> Path:
    """A private copy of the workflow (its own .snakemake: locks, incomplete markers, metadata)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


def batch_cmd(raw: Path, results: Path, batch_count: int) -> list[str]:
    return [
        str(BIN / "cr51-batch"), "--cores", "2", "--lock-wait", "60", "--config", f"raw_dir={raw}",
        f"results_dir={results}", f"batch_count={batch_count}", "settle_seconds=0",
    ]  # fmt: skip


def run(work: Path, raw: Path, results: Path, batch_count: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        batch_cmd(raw, results, batch_count), cwd=work, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


def tables(results: Path, times: bool = True) -> dict[str, str]:
    """{name: sha256} of every results/*.csv; ``times=False``: plate_history.csv's times as set/unset."""
    out = {}
    for path in sorted(results.glob("*.csv")):
        data = path.read_bytes()
        if path.name == "plate_history.csv" and not times:
            rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"))))
            idx = [rows[0].index(c) for c in HISTORY_TIMES if rows and c in rows[0]]
            for row in rows[1:]:
                for i in idx:
                    if i < len(row):
                        row[i] = "set" if row[i] else ""
            data = "\n".join(",".join(r) for r in rows).encode()
        out[path.name] = hashlib.sha256(data).hexdigest()
    return out


def differs(got: dict[str, str], want: dict[str, str]) -> list[str]:
    """Tables missing, extra or with other bytes."""
    return sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))


def rerun_until_ok(work: Path, raw: Path, results: Path, batch_count: int, max_reruns: int) -> tuple[int, list[int]]:
    """Rerun until exit 0: (reruns made, their exit codes)."""
    codes = []
    for _ in range(max_reruns):
        codes.append(run(work, raw, results, batch_count).returncode)
        if codes[-1] == 0:
            break
    return len(codes), codes


def targets(results: Path) -> dict[str, list[Path]]:
    """The files a corruption may hit, by kind."""
    return {
        "cache entry": sorted(results.glob("cache/*/*.jsonl")),
        "batch file": sorted(results.glob("batches/*.jsonl")),
        "batch index": sorted(results.glob("batches/index.json")),
        "result table": sorted(results.glob("*.csv")),
    }


def corruption_trials(
    work: Path,
    raw: Path,
    results: Path,
    clean: Path,
    want: dict[str, str],
    args: argparse.Namespace,
    rng: random.Random,
) -> list[dict]:
    out = []
    for n in range(args.corruptions):
        kinds = {k: v for k, v in targets(results).items() if v}
        kind = rng.choice(sorted(kinds))
        path = rng.choice(kinds[kind])
        damage = rng.choice(DAMAGE)
        others = [p for p in kinds[kind] if p != path]
        globals()[damage](path, rng, rng.choice(others) if others else None)
        if kind == "cache entry":  # an entry is read when its batch is recomputed: make it so
            (results / "batches" / f"{path.parent.name}.jsonl").unlink(missing_ok=True)
        t = time.perf_counter()
        reruns, codes = rerun_until_ok(work, raw, results, args.batch_count, args.max_reruns)
        bad = differs(tables(results), want)
        out.append(record(f"corruption {n + 1}", kind, damage, str(path.relative_to(results)), reruns, codes, t, bad))
        # back to the clean run's folder: every trial starts from the same state
        shutil.rmtree(results)
        shutil.copytree(clean, results, symlinks=True)
    return out


def kill_trials(
    work: Path, raw: Path, base: Path, want: dict[str, str], clean_seconds: float, args: argparse.Namespace,
    rng: random.Random,
) -> list[dict]:  # fmt: skip
    out = []
    for n in range(args.kills):
        results = base / f"kill{n}"
        delay = rng.uniform(0.5, clean_seconds)
        for _ in range(KILL_ATTEMPTS):  # a run that ends before its kill (less load) is tried again, sooner
            shutil.rmtree(results, ignore_errors=True)
            proc = subprocess.Popen(
                batch_cmd(raw, results, args.batch_count),
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=delay)
                finished = True
                delay /= 2
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the process group of the run this script started
                proc.wait()
                finished = False
                break
        time.sleep(0.2)  # the killed process group's children are gone
        t = time.perf_counter()
        reruns, codes = rerun_until_ok(work, raw, results, args.batch_count, args.max_reruns)
        bad = differs(tables(results, times=False), want)
        damage = "finished before the kill" if finished else f"killed after {delay:.1f} s"
        out.append(record(f"kill {n + 1}", "kill -9", damage, "", reruns, codes, t, bad))
        if not args.keep:
            shutil.rmtree(results, ignore_errors=True)
    return out


def record(
    name: str, kind: str, damage: str, file: str, reruns: int, codes: list[int], started: float, differ: list[str]
) -> dict:
    """One trial's figures (``started``: ``perf_counter`` when its reruns began), printed as it ends."""
    trial = {
        "trial": name,
        "kind": kind,
        "damage": damage,
        "file": file,
        "reruns": reruns,
        "exit_codes": codes,
        "seconds": round(time.perf_counter() - started, 1),
        "differ": differ,
        "ok": codes[-1] == 0 and not differ,
    }
    report(trial)
    return trial


def report(trial: dict) -> None:
    verdict = "ok" if trial["ok"] else "DIFFERS: " + (", ".join(trial["differ"]) or "no exit 0")
    print(
        f"{trial['trial']:>15}  {trial['kind']:<12} {trial['damage']:<24} {trial['file'][:60]:<60} "
        f"reruns {trial['reruns']} (exit {','.join(map(str, trial['exit_codes']))}), {trial['seconds']} s: {verdict}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=200)
    ap.add_argument("--corruptions", type=int, default=100)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--batch-count", type=int, default=4)
    ap.add_argument("--max-reruns", type=int, default=3, help="reruns after a trial before it counts as failed")
    ap.add_argument("--work", type=Path, help="folder for the plates and results (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the folders")
    ap.add_argument("--json", type=Path, help="write every trial's outcome here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="cr51-chaos-")) if args.work is None else args.work
    base.mkdir(parents=True, exist_ok=True)
    try:
        work, raw, results = pipeline_copy(base / "pipeline"), base / "raw", base / "results"
        raw.mkdir()
        write_plates(raw, 0, args.plates, args.seed)
        t = time.perf_counter()
        first = run(work, raw, results, args.batch_count)
        clean_seconds = time.perf_counter() - t
        if first.returncode != 0:
            print(f"the clean run failed ({first.returncode}): {first.stdout}{first.stderr[-2000:]}")
            return 1
        want = tables(results)
        print(f"clean run: {args.plates} plates, {len(want)} tables, {clean_seconds:.1f} s", flush=True)
        clean = base / "clean"
        shutil.copytree(results, clean, symlinks=True)
        trials = corruption_trials(work, raw, results, clean, want, args, rng)
        want_untimed = tables(clean, times=False)
        trials += kill_trials(work, raw, base, want_untimed, clean_seconds, args, rng)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(base, ignore_errors=True)
    failed = [t for t in trials if not t["ok"]]
    by_kind = Counter((t["kind"], t["ok"]) for t in trials)
    kinds = sorted({k for k, _ in by_kind})
    print("summary: " + "; ".join(f"{k}: {by_kind[(k, True)]} ok, {by_kind[(k, False)]} not" for k in kinds))
    print(f"{len(trials) - len(failed)} of {len(trials)} trials ended with the clean run's tables")
    if args.json:
        args.json.write_text(json.dumps({"plates": args.plates, "trials": trials}, indent=1), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
