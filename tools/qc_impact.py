"""What the issue-15 plate rules remove on simulated plates (figures for docs/qc-rules.md).

Simulates N plates (``cr51.simulate``, the benchmark's kind: standard layout, six lots, donors
D00-D39), clean and again with one outlier well each (a random well x ``--outlier-factor``), runs them
through the pipeline's own functions (``plate.ingest_batch``, ``plate.analyse_batch``,
``combination.combine_plates``) at the default settings, and counts:

* plates that fail QC, and by which flag (the new ``CONTROL_CV_HIGH``, ``CONTROL_OUTLIER``,
  ``RANGE_LOW``, or the old ``SPONTANEOUS_HIGH``);
* wells flagged as outliers by Dixon's Q alone (the old rule: ``tolerance_pct = 0``, no Poisson test)
  and by the new rule;
* lot x plate potency rows kept out of the combination, by reason (implausible fit, unbounded
  interval, QC fail, ...), and the new flags ``LAYOUT_OVERLAP`` / ``DESIGN_MISMATCH``.

    .venv/bin/python tools/qc_impact.py --plates 300

Before/after the rules, plate by plate and lot by lot (the dump uses only functions both versions have;
``CR51_WORKFLOW`` points the tool at another checkout's package)::

    git worktree add /tmp/cr51-before 56114b6
    CR51_WORKFLOW=/tmp/cr51-before/workflow .venv/bin/python tools/qc_impact.py --dump before.json
    .venv/bin/python tools/qc_impact.py --dump after.json
    .venv/bin/python tools/qc_impact.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("CR51_WORKFLOW", str(REPO / "workflow")))

from cr51.combination import combine_plates  # noqa: E402
from cr51.plate import PlateInput, analyse_batch, ingest_batch  # noqa: E402
from cr51.schema import WELLS_IN_ORDER  # noqa: E402
from cr51.settings import Analysis  # noqa: E402
from cr51.simulate import simulate_plate, write_plate  # noqa: E402

SCENARIOS = (("clean", None), ("outlier", 1.6))


def write(raw: Path, n: int, seed: int, outlier_factor: float | None) -> list[PlateInput]:
    plates = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        name = f"plate{i:05d}"
        kw = {}
        if outlier_factor is not None:
            kw = dict(outlier_well=WELLS_IN_ORDER[int(np.random.default_rng([seed, i, 1]).integers(96))],
                      outlier_factor=outlier_factor)  # fmt: skip
        plate = simulate_plate(name, rng, donor=f"D{i % 40:02d}", **kw)
        write_plate(raw, plate, "well_list")
        plates.append(PlateInput(name, str(raw / f"{name}.toml"), str(raw / f"{name}.csv")))
    return plates


def run(plates: list[PlateInput], settings: Analysis) -> dict[str, object]:
    tables = ingest_batch(plates, settings)
    qc, wells = tables["qc"], tables["wells"]
    analysed = analyse_batch(wells, qc, settings)
    _, inputs = combine_plates(analysed["potency"], qc, settings)
    flags = Counter(f for fl in qc["flags"] for f in fl.split(";") if f)
    fails = Counter(f for fl, st in zip(qc["flags"], qc["status"]) if st == "fail" for f in fl.split(";") if f)
    reasons = Counter(re.sub(r"[-\d.]+", "#", r)[:90] for r in inputs.loc[~inputs["included"], "reason"])
    fits = analysed["fits"]
    return {
        "plates": len(plates),
        "rejected": int((tables["files"]["status"] == "rejected").sum() // 2),
        "qc_fail": int((qc["status"] == "fail").sum()),
        "fail_flags": dict(fails),
        "flags": dict(flags),
        "outlier_wells": int(wells["outlier"].sum()),
        "control_outlier_wells": int((wells["outlier"] & wells["role"].isin(["spontaneous", "maximum"])).sum()),
        "implausible_fits": int((fits["plausible"] == False).sum()),  # noqa: E712
        "implausible_bottoms": sorted(round(float(b), 1) for b in fits.loc[fits["plausible"] == False, "bottom"]),  # noqa: E712
        "fits_converged": int(fits["converged"].sum()),
        "lot_rows": len(inputs),
        "lot_rows_excluded": int((~inputs["included"]).sum()),
        "exclusion_reasons": dict(reasons.most_common()),
        "rp_ci_unbounded": int((analysed["potency"]["ci"] == "unbounded").sum()),
        "slope_ratio_ci_unbounded": int((analysed["potency"]["slope_ratio_ci"] == "unbounded").sum()),
    }


def old_outlier_rule():
    """Dixon's Q alone, as before issue 15 (no Poisson test, tolerance 0)."""
    from cr51 import lysis

    lysis.POISSON_SDS = 0.0


def dump(n: int, seed: int, path: Path) -> None:
    """Per scenario: each plate's QC status and flags, each plate x lot's inclusion and reason (JSON)."""
    settings = Analysis.from_config({"layouts_dir": str(REPO / "config" / "layouts")})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, factor in SCENARIOS:
            raw = Path(tmp) / label
            raw.mkdir()
            t = ingest_batch(write(raw, n, seed, factor), settings)
            a = analyse_batch(t["wells"], t["qc"], settings)
            _, inputs = combine_plates(a["potency"], t["qc"], settings)
            out[label] = {
                "qc": {r["plate"]: [r["status"], r["flags"] if isinstance(r["flags"], str) else ""]
                       for r in t["qc"].to_dict("records")},
                "inputs": {f"{r['plate']}|{r['lot']}": [bool(r["included"]), str(r["reason"])]
                           for r in inputs.to_dict("records")},
            }  # fmt: skip
    path.write_text(json.dumps(out))


def compare(before: Path, after: Path) -> None:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    for label in a:
        qa, qb = a[label]["qc"], b[label]["qc"]
        ia, ib = a[label]["inputs"], b[label]["inputs"]
        failed_now = [p for p in qb if qb[p][0] == "fail" and qa.get(p, ["pass"])[0] != "fail"]
        passes_now = [p for p in qa if qa[p][0] == "fail" and qb.get(p, ["fail"])[0] != "fail"]
        removed = [k for k in ib if ia.get(k, [False])[0] and not ib[k][0]]
        added = [k for k in ib if ib[k][0] and not ia.get(k, [True])[0]]
        why = Counter(re.sub(r"-?\d[\d.e+-]*", "#", ib[k][1])[:70] for k in removed)
        flags_gone = Counter(f for p in qa for f in set(qa[p][1].split(";")) - set(qb[p][1].split(";")) if f)
        flags_new = Counter(f for p in qb for f in set(qb[p][1].split(";")) - set(qa[p][1].split(";")) if f)
        print(f"== {label}: {len(qa)} plates, {len(ia)} plate x lot rows")
        print(f"  plates failing QC: {sum(v[0] == 'fail' for v in qa.values())} before, "
              f"{sum(v[0] == 'fail' for v in qb.values())} after ({len(failed_now)} newly failing, {len(passes_now)} passing now)")  # fmt: skip
        print(f"  flags gone: {dict(flags_gone)}; flags new: {dict(flags_new)}")
        print(f"  plate x lot rows in the combination: {sum(v[0] for v in ia.values())} before, "
              f"{sum(v[0] for v in ib.values())} after ({len(removed)} removed, {len(added)} added)")  # fmt: skip
        for reason, k in why.most_common():
            print(f"    removed: {k} x {reason}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--outlier-factor", type=float, default=1.6)
    ap.add_argument("--dump", type=Path, help="write per-plate/lot verdicts to this JSON file and stop")
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), help="compare two dumps")
    args = ap.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    if args.dump:
        dump(args.plates, args.seed, args.dump)
        return 0
    settings = Analysis.from_config({"layouts_dir": str(REPO / "config" / "layouts")})
    with tempfile.TemporaryDirectory() as tmp:
        for label, factor in (("clean", None), (f"one outlier well x{args.outlier_factor:g}", args.outlier_factor)):
            raw = Path(tmp) / label.replace(" ", "_")
            raw.mkdir()
            plates = write(raw, args.plates, args.seed, factor)
            new = run(plates, settings)
            from cr51 import lysis

            poisson = lysis.POISSON_SDS
            old_outlier_rule()
            old = run(plates, Analysis.from_config({**settings.to_dict(), "outliers": {"tolerance_pct": 0}}))
            lysis.POISSON_SDS = poisson
            print(f"== {args.plates} simulated plates, {label} (seed {args.seed})")
            for key, value in new.items():
                print(f"  {key}: {value}")
            print(f"  Dixon's Q alone (old outlier rule): {old['outlier_wells']} outlier wells "
                  f"({old['control_outlier_wells']} in controls), {old['qc_fail']} plates failing")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
