"""Where a plate's time goes (issue 6): per-step wall times of the batch job's per-plate work.

Writes N simulated plates (the benchmark's kind: 96 wells, 6 lots, ``well_list``) to a temporary
folder and runs :func:`cr51.batch.process_plate`'s steps on each, in one process, printing the mean
milliseconds per plate of every step (the steps together are what ``process_plate`` does: ingest,
analysis, the report section, every table's rendered rows, the plate's page and curves figure, and
the plate's products). ``--cprofile`` adds a cProfile listing of the whole loop.

    .venv/bin/python tools/profile_plate.py --plates 60 [--cprofile 30]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from bench import write_plates  # noqa: E402  (tools/bench.py, beside this file)

from cr51 import plate as plate_mod  # noqa: E402
from cr51 import report  # noqa: E402
from cr51.campaign import products_of  # noqa: E402
from cr51.report.plate_page import plate_figures, plate_files, plate_page  # noqa: E402
from cr51.schema import PLATE_TABLES, TABLES  # noqa: E402
from cr51.settings import Analysis  # noqa: E402
from cr51.tables import render_rows  # noqa: E402


def settings() -> Analysis:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["layouts_dir"] = str(REPO / "config" / "layouts")
    return Analysis.from_config(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=60)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the top N cProfile rows")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cr51-profile-") as tmp:
        write_plates(Path(tmp), 0, args.plates + 1, args.seed)  # the benchmark's plates
        inputs = [
            plate_mod.PlateInput(p.stem, str(p), str(p.with_suffix(".csv"))) for p in sorted(Path(tmp).glob("*.toml"))
        ]
        return profile(inputs, settings(), args.cprofile)


def profile(inputs: list[plate_mod.PlateInput], cfg: dict, cprofile: int) -> int:
    """Time every plate but the first, which warms up imports and the lazy lmfit import
    (the steps of :func:`cr51.batch.process_plate`)."""
    warm, inputs = inputs[0], inputs[1:]
    first = plate_mod.ingest_batch([warm], cfg)
    plate_mod.analyse_batch(first["wells"], first["qc"], cfg)

    times: dict[str, float] = defaultdict(float)
    prof = cProfile.Profile() if cprofile else None
    if prof:
        prof.enable()
    for inp in inputs:
        t0 = time.perf_counter()
        tables = plate_mod.ingest_batch([inp], cfg)
        t1 = time.perf_counter()
        tables.update(plate_mod.analyse_batch(tables["wells"], tables["qc"], cfg))
        t2 = time.perf_counter()
        sections = report.plate_sections(tables, cfg)
        t3 = time.perf_counter()
        for name in PLATE_TABLES:  # every table, as a batch job renders it
            render_rows(tables[name], TABLES[name])
        t4 = time.perf_counter()
        files = {}
        for name, section in sections.items():  # the plate's page and curves figure, as process_plate draws them
            files[plate_files(name)[0]] = plate_page(
                section, tables["qc"], tables["potency"], tables["files"], inp.version, cfg
            )
            files.update(plate_figures(section, tables["qc"]))
        t5 = time.perf_counter()
        products_of(tables["wells"])
        t6 = time.perf_counter()
        times["ingest"] += t1 - t0
        times["analysis"] += t2 - t1
        times["report section"] += t3 - t2
        times["rendered rows"] += t4 - t3
        times["page, figure"] += t5 - t4
        times["products"] += t6 - t5
    if prof:
        prof.disable()
    n = len(inputs)
    total = sum(times.values())
    for step, s in times.items():
        print(f"{step:16s} {1000 * s / n:7.1f} ms/plate")
    print(f"{'total':16s} {1000 * total / n:7.1f} ms/plate ({n} plates)")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(cprofile)
        pstats.Stats(prof).sort_stats("tottime").print_stats(cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
