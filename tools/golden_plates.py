"""Check that a change leaves every per-plate result bit for bit as it was (performance work).

Writes N simulated plates of the benchmark's kind (tools/bench.py) to a temporary folder, runs
:func:`cr51.batch.process_plate` on each in one process, and either saves every table (as CSV text)
and report section, or compares them with what was saved:

    git stash; .venv/bin/python tools/golden_plates.py save /tmp/golden.pkl; git stash pop
    .venv/bin/python tools/golden_plates.py check /tmp/golden.pkl      # exit 1 on any difference

Two different processes can disagree in the last digit of a few fitted values (numpy's reductions
depend on memory alignment; see docs/benchmarks.md), so a difference is worth a look, not always a bug.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from bench import write_plates  # noqa: E402  (tools/bench.py, beside this file)
from profile_plate import settings  # noqa: E402

from cr51.batch import process_plate  # noqa: E402
from cr51.plate import PlateInput  # noqa: E402

Results = dict[str, tuple[dict[str, str], dict[str, str]]]


def results(n: int, seed: int) -> Results:
    """{plate: ({table: CSV text}, {plate: section})} for ``n`` benchmark plates."""
    cfg = settings()
    out: Results = {}
    with tempfile.TemporaryDirectory(prefix="cr51-golden-") as tmp:
        write_plates(Path(tmp), 0, n, seed)
        for layout in sorted(Path(tmp).glob("*.toml")):
            res = process_plate(PlateInput(layout.stem, str(layout), str(layout.with_suffix(".csv"))), cfg)
            out[layout.stem] = ({k: v.to_csv(index=False) for k, v in res.tables.items()}, res.sections)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["save", "check"])
    ap.add_argument("file", type=Path)
    ap.add_argument("--plates", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    now = results(args.plates, args.seed)
    if args.mode == "save":
        args.file.write_bytes(pickle.dumps(now))
        print(f"saved {len(now)} plates to {args.file}")
        return 0
    before: Results = pickle.loads(args.file.read_bytes())
    diffs = [
        f"{plate}: {what}"
        for plate, (tables, sections) in now.items()
        for what in [k for k in tables if tables[k] != before[plate][0].get(k)]
        + (["report section"] if sections != before[plate][1] else [])
    ]
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s) over {len(now)} plates")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
