"""Error rates of the campaign analysis and of the parallelism gate, by simulation (not a timed test).

Two parts; figures in docs/campaign.md.

``model``: ln IC50 rows simulated directly from the fixed-block model (plate effects N(0, 0.4²),
residual N(0, 0.12²), 6 lots equal), ``--model-campaigns`` campaigns (default 2,000) of
``--model-plates`` plates (default 6): how often ``lots_differ`` and the Tukey family (any pair) reject at alpha = 0.05,
and how often the campaign 95 % CIs of each lot's RP vs the reference cover the truth (1). Seconds.
``--plate-sd-spread S`` gives every plate its own residual SD, 0.12 × LN(0, S²) (unequal plate precision;
the simulated plates' ln RP standard errors vary with S ≈ 0.3, see ``precision`` in the pipeline summary).

``pipeline``: whole simulated plates (cr51.simulate, six lots of the default RPs: the weak LOT-E at 0.5,
the potent LOT-D at 2.0) through the real code (layout, export, lysis, QC, fits, potency, gate,
campaign): ``--campaigns`` campaigns (default 1,000) of ``--plates`` plates. Reports the campaign CI
coverage of the true RPs, and for each lot the share of its plates the parallelism gate removes from the
combination (weak and potent must agree within 2 points). A second set with all lots equal
(``--equal``) gives the pipeline's ``lots_differ`` rejection rate. Also per lot the share of its
plates the implausible-fit rule keeps out, the share out of the combination for any reason, and the
plates' precision (per plate the median standard error of ln RP, from the Fieller limits). ~0.3-0.5 s
per plate per core. ``--save DIR`` keeps every chunk's potency.csv and qc.csv rows
(``DIR/chunk<start>_{potency,qc}.csv``), and ``reanalyse DIR`` recomputes the summary from them without
refitting a plate (e.g. after a change to the campaign analysis alone).

    .venv/bin/python tools/validate_campaign.py model [--model-plates 3] [--plate-sd-spread 0.35]
    .venv/bin/python tools/validate_campaign.py pipeline --campaigns 1000 --plates 3 --jobs 2 [--equal] [--save DIR]
    .venv/bin/python tools/validate_campaign.py reanalyse DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from cr51 import campaign  # noqa: E402
from cr51.combination import combine_plates  # noqa: E402

LOTS = ("REF", "A", "B", "C", "D", "E")
SETTINGS = {
    "layouts_dir": str(REPO / "config" / "layouts"),
    "max_export_bytes": 20_000_000,
    "qc": {},
    "outliers": {"rule": "dixon_q", "exclude": False},
    "fit": {"models": ["LL.4"], "et_ratio": None},
    "potency": {"ci_level": 0.95, "alpha": 0.05, "parallelism_gate": "f_test"},
}


def model_campaign(
    rng: np.random.Generator, plates: int, alpha: float = 0.05, sd_spread: float = 0.0
) -> tuple[bool, bool, list[bool]]:
    """(lots_differ rejects, any Tukey pair rejects, per-lot CI covers 1) for one equal-lots campaign."""
    sds = 0.12 * rng.lognormal(0.0, sd_spread, plates) if sd_spread > 0 else np.full(plates, 0.12)
    rows = [
        (f"P{p}", lot, 0.5 + plate + rng.normal(0, sds[p]))
        for p, plate in enumerate(rng.normal(0, 0.4, plates))
        for lot in LOTS
    ]
    data = pd.DataFrame(rows, columns=["plate", "lot", "log_ic50"])
    fit = campaign.fit_blocks(data, LOTS)
    _, _, _, p = campaign.lots_differ(fit)
    from scipy import special

    k = len(LOTS)
    t_max = max(abs(np.divide(*fit.contrast(a, b))) for a in range(k) for b in range(a + 1, k))
    family = bool(t_max * np.sqrt(2.0) > campaign._q_tukey(0.95, k, fit.df))  # = any Tukey p_adj < 0.05

    t = float(special.stdtrit(fit.df, 0.975))
    cover = []
    for i in range(1, len(LOTS)):
        est, se = fit.contrast(i, 0)
        cover.append(abs(est) <= t * se)
    return bool(p < alpha), family, cover


def run_model(n: int, plates: int, seed: int, sd_spread: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    res = [model_campaign(rng, plates, sd_spread=sd_spread) for _ in range(n)]
    return {
        "campaigns": n,
        "plates": plates,
        "plate_sd_spread": sd_spread,
        "lots_differ_rejection": float(np.mean([r[0] for r in res])),
        "tukey_family_rejection": float(np.mean([r[1] for r in res])),
        "ci_coverage": float(np.mean([c for r in res for c in r[2]])),
    }


def _pipeline_chunk(args: tuple[int, int, int, bool, str, str | None]) -> dict:
    """Simulate and analyse campaigns [start, stop) in one process; per-campaign summaries."""
    from cr51.batch import process_batch
    from cr51.plate import PlateInput
    from cr51.simulate import DEFAULT_LOTS, simulate_plate, write_plate

    start, stop, plates, equal, folder, save = args
    lots = {k: 1.0 for k in DEFAULT_LOTS} if equal else dict(DEFAULT_LOTS)
    raw = Path(folder) / f"chunk{start}"
    raw.mkdir(parents=True, exist_ok=True)
    potency, qc = [], []
    for c in range(start, stop):
        inputs = []
        for k in range(plates):
            name = f"c{c:05d}_p{k}"
            plate = simulate_plate(name, np.random.default_rng([2026, int(equal), c, k]), lots=lots, donor=f"D{c}_{k}")
            write_plate(raw, plate, "well_list")
            inputs.append(PlateInput(name, str(raw / f"{name}.toml"), str(raw / plate.export_name)))
        tables = process_batch(inputs, SETTINGS).tables
        potency.append(tables["potency"].assign(campaign_no=c))
        qc.append(tables["qc"].assign(campaign_no=c))
        for f in raw.iterdir():
            f.unlink()
    pot, q = pd.concat(potency, ignore_index=True), pd.concat(qc, ignore_index=True)
    if save:
        pot.to_csv(Path(save) / f"chunk{start:05d}_potency.csv", index=False)
        q.to_csv(Path(save) / f"chunk{start:05d}_qc.csv", index=False)
    return _summarise_chunk(pot, q, equal)


def _summarise_chunk(potency: pd.DataFrame, qc: pd.DataFrame, equal: bool) -> dict:
    """Per-campaign decisions and per-lot-plate outcomes of a chunk's potency and qc rows."""
    from cr51.simulate import DEFAULT_LOTS

    lots = {k: 1.0 for k in DEFAULT_LOTS} if equal else dict(DEFAULT_LOTS)
    out: dict[str, list] = {"differ": [], "pairs": [], "cover": [], "gate": [], "implausible": [], "out": [], "se": []}
    for _, pot in potency.groupby("campaign_no", sort=True):
        q = qc[qc["plate"].isin(set(pot["plate"]))]
        ct = campaign.analyse(pot.drop(columns="campaign_no"), q.drop(columns="campaign_no"), SETTINGS)
        test = ct.tests[ct.tests["test"] == "lots_differ"]
        if not test.empty and np.isfinite(test["p"].iloc[0]):
            out["differ"].append(bool(test["p"].iloc[0] < 0.05))
            out["pairs"].append(bool((ct.pairs["p_adj"] < 0.05).any()))
        for r in ct.lots.itertuples():
            if r.lot != "REF-001" and np.isfinite(r.rp_lo):
                out["cover"].append(bool(r.rp_lo <= lots[r.lot] <= r.rp_hi))
        _, used = combine_plates(pot, q, SETTINGS)
        for r in used.itertuples():
            out["gate"].append((r.lot, bool("parallel" in str(r.reason))))
            out["implausible"].append((r.lot, bool("implausible" in str(r.reason))))
            out["out"].append((r.lot, not bool(r.included)))
    ok = potency[(potency["status"] == "ok") & (potency["rp_lo"] > 0)]
    if not ok.empty:
        from scipy import special

        t = special.stdtrit(ok["df"].astype(float), 0.975)
        se = (np.log(ok["rp_hi"].astype(float)) - np.log(ok["rp_lo"].astype(float))) / (2.0 * t)
        out["se"] = [float(v) for v in se.groupby(ok["plate"]).median()]
    return out


def _shares(pairs: list) -> dict[str, float]:
    frame = pd.DataFrame(pairs, columns=["lot", "flag"])
    return {k: float(v) for k, v in frame.groupby("lot")["flag"].mean().items()}


def summarise(parts: list[dict], n: int, plates: int, equal: bool) -> dict:
    merged = {k: [x for p in parts for x in p[k]] for k in parts[0]}
    se = np.asarray(merged["se"], float)
    return {
        "campaigns": n,
        "plates_per_campaign": plates,
        "all_lots_equal": equal,
        "lots_differ_rejection": float(np.mean(merged["differ"])) if merged["differ"] else None,
        "tukey_family_rejection": float(np.mean(merged["pairs"])) if merged["pairs"] else None,
        "n_tests": len(merged["differ"]),
        "ci_coverage": float(np.mean(merged["cover"])) if merged["cover"] else None,
        "n_intervals": len(merged["cover"]),
        "gate_share_by_lot": _shares(merged["gate"]),
        "implausible_share_by_lot": _shares(merged["implausible"]),
        "out_of_combination_share_by_lot": _shares(merged["out"]),
        "lot_plates": len(merged["gate"]),
        "precision": {
            "plates": int(se.size),
            "median_se_ln_rp_quantiles": {q: float(np.quantile(se, q)) for q in (0.1, 0.5, 0.9)} if se.size else {},
            "cv_across_plates": float(se.std() / se.mean()) if se.size else None,
        },
    }


def run_pipeline(n: int, plates: int, jobs: int, equal: bool, save: str | None = None) -> dict:
    chunks = max(jobs * 4, 1)
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    if save:
        Path(save).mkdir(parents=True, exist_ok=True)
        (Path(save) / "run.json").write_text(json.dumps({"campaigns": n, "plates": plates, "equal": equal}))
    with tempfile.TemporaryDirectory() as folder, ProcessPoolExecutor(jobs) as pool:
        args = [(a, b, plates, equal, folder, save) for a, b in zip(bounds, bounds[1:]) if b > a]
        parts = list(pool.map(_pipeline_chunk, args))
    return summarise(parts, n, plates, equal)


def reanalyse(folder: str) -> dict:
    """The pipeline summary again from the rows ``pipeline --save`` kept (no plate is refitted)."""
    run = json.loads((Path(folder) / "run.json").read_text())
    parts = []
    for pot_file in sorted(Path(folder).glob("chunk*_potency.csv")):
        qc_file = pot_file.with_name(pot_file.name.replace("_potency", "_qc"))
        pot = pd.read_csv(pot_file, dtype={"plate": str, "lot": str, "reference_lot": str})
        q = pd.read_csv(qc_file, dtype={"plate": str, "reference_lot": str})
        pot["in_joint"] = pot["in_joint"].astype("boolean")
        pot["equivalent"] = pot["equivalent"].astype("boolean")
        parts.append(_summarise_chunk(pot, q, run["equal"]))
    return summarise(parts, run["campaigns"], run["plates"], run["equal"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["model", "pipeline", "reanalyse"])
    ap.add_argument("folder", nargs="?", help="reanalyse: the folder pipeline --save wrote")
    ap.add_argument("--model-campaigns", type=int, default=2000)
    ap.add_argument("--model-plates", type=int, default=6)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--plates", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--equal", action="store_true", help="pipeline: all lots of equal potency")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--plate-sd-spread", type=float, default=0.0, help="model: SD of ln(residual SD) across plates")
    ap.add_argument("--save", help="pipeline: keep every chunk's potency and qc rows in this folder")
    a = ap.parse_args(argv)
    if a.part == "model":
        out = run_model(a.model_campaigns, a.model_plates, a.seed, a.plate_sd_spread)
    elif a.part == "reanalyse":
        if not a.folder:
            ap.error("reanalyse needs the folder pipeline --save wrote")
        out = reanalyse(a.folder)
    else:
        out = run_pipeline(a.campaigns, a.plates, a.jobs, a.equal, a.save)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
