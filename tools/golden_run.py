"""Check that a change leaves every result file of a whole run byte for byte as it was.

Runs the workflow (a real ``snakemake`` run, as ``make demo`` does) on the shipped example plates
plus N simulated plates of the benchmark's kind, and either saves the sha256 of every result file
(tables, report, figures) or compares them with what was saved:

    git stash; .venv/bin/python tools/golden_run.py save /tmp/golden.json; git stash pop
    .venv/bin/python tools/golden_run.py check /tmp/golden.json      # exit 1 on any difference

What differs between any two runs of the same code is blanked before hashing: the pages' and the
workbook's generation times (``2026-12-02 09:14 UTC``, in the text and in the lot and campaign pages'
print header), plate_history.csv's admission and acceptance times, the workbook's creation and
modification times (``docProps/core.xml``; a workbook is hashed member by member), and the software
digest a plate page prints (it changes with any change of the code, by design). Logs, the audit log,
the plate cache and the batch files (internal formats, not results) are not compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "tools"))

from bench import write_plates  # noqa: E402  (tools/bench.py, beside this file)

#: Folders and files of results/ that are internal state, not results.
INTERNAL = ("logs/", "cache/", "batches/", "archive/", "audit.jsonl", ".scan-cache.json", ".snakemake/")
_GENERATED = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC")  # pages' and the workbook's generation time
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")  # plate_history.csv's admitted/accepted times
_XLSX_TIME = re.compile(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*")  # the workbook's own times
_SOFTWARE = re.compile(rb"software <code>[0-9a-f]{12}</code>")  # a plate page's software (code) digest


def _blanked(data: bytes) -> bytes:
    data = _STAMP.sub(b"-", _GENERATED.sub(b"-", data))
    return _SOFTWARE.sub(b"software -", _XLSX_TIME.sub(rb"\1-", data))


def _content(path: Path) -> bytes:
    """The file's bytes, a workbook's as its members' names and bytes, run-dependent times blanked."""
    if path.suffix != ".xlsx":
        return _blanked(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        return b"".join(n.encode() + b"\0" + _blanked(zf.read(n)) + b"\0" for n in sorted(zf.namelist()))


def digests(results: Path) -> dict[str, str]:
    """{path relative to results: sha256} of every result file (generation and acceptance times blanked)."""
    out = {}
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results).as_posix()
        if not path.is_file() or rel.startswith(INTERNAL) or "/." in f"/{rel}":
            continue
        out[rel] = hashlib.sha256(_content(path)).hexdigest()
    return out


def run(n: int, seed: int) -> dict[str, str]:
    """Digests of a run on the examples plus ``n`` simulated plates."""
    tmp = Path(tempfile.gettempdir()) / "cr51-golden-run"  # a fixed path: the report prints it
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        raw, results = tmp / "raw", tmp / "results"
        shutil.copytree(REPO / "resources" / "example", raw)
        write_plates(raw, 0, n, seed)
        cmd = [
            str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--quiet", "all",
            "--config", f"raw_dir={raw}", f"results_dir={results}", "settle_seconds=0",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return digests(results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["save", "check"])
    ap.add_argument("file", type=Path)
    ap.add_argument("--plates", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    now = run(args.plates, args.seed)
    if args.mode == "save":
        args.file.write_text(json.dumps(now, indent=1))
        print(f"saved {len(now)} result files to {args.file}")
        return 0
    before = json.loads(args.file.read_text())
    diffs = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for d in diffs:
        print(f"{d}: {'missing now' if d not in now else 'new' if d not in before else 'differs'}")
    print(f"{len(diffs)} difference(s) over {len(now)} result files")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
