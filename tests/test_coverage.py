"""Combined relative potencies from simulated plates cover the simulator's true potencies ~95 % of the time.

Each campaign is three independent plates (three donors, days) of the six default lots; the plates go
through the same code as the pipeline (layout, export parsing, lysis, QC, fits, potency) and each lot's
plates are combined as Ph. Eur. 5.3 prescribes.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cr51.batch import process_batch
from cr51.combination import combine_plates
from cr51.plate import PlateInput
from cr51.simulate import DEFAULT_LOTS, simulate_plate, write_plate

SETTINGS = {
    "layouts_dir": "config/layouts",
    "max_export_bytes": 20_000_000,
    "qc": {},
    "outliers": {"rule": "dixon_q", "exclude": False},
    "fit": {"models": ["LL.4"], "et_ratio": None},
    "potency": {"ci_level": 0.95, "alpha": 0.05, "parallelism_gate": "f_test"},
}
CAMPAIGNS = 40
PLATES_PER_CAMPAIGN = 3


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    raw = tmp_path_factory.mktemp("coverage")
    plates = []
    for c in range(CAMPAIGNS):
        for k in range(PLATES_PER_CAMPAIGN):
            name = f"c{c:02d}_p{k}"
            plate = simulate_plate(name, np.random.default_rng([2024, c, k]), donor=f"D{c:02d}{k}")
            write_plate(raw, plate, "well_list")
            plates.append(PlateInput(name, str(raw / f"{name}.toml"), str(raw / plate.export_name)))
    settings = dict(SETTINGS, layouts_dir=str(Path(__file__).resolve().parents[1] / "config" / "layouts"))
    return process_batch(plates, settings).tables, settings, plates


def test_every_simulated_plate_is_accepted_and_fitted(campaigns):
    tables, *_ = campaigns
    assert (tables["files"]["status"] == "ok").all()
    assert (tables["qc"]["status"] == "pass").all()
    assert (tables["potency"]["status"] == "ok").mean() > 0.97


def test_combined_ci_coverage_near_95_percent(campaigns):
    tables, settings, _ = campaigns
    pot, qc = tables["potency"], tables["qc"]
    hits, widths = [], []
    for c in range(CAMPAIGNS):
        mine = pot["plate"].str.startswith(f"c{c:02d}_")
        combined, _ = combine_plates(pot[mine], qc[qc["plate"].str.startswith(f"c{c:02d}_")], settings)
        for row in combined[combined["n_plates"] > 0].itertuples():
            truth = DEFAULT_LOTS[row.lot]
            hits.append(row.rp_lo <= truth <= row.rp_hi)
            widths.append(np.log(row.rp_hi / row.rp_lo))
    coverage = float(np.mean(hits))
    assert len(hits) >= 0.9 * CAMPAIGNS * (len(DEFAULT_LOTS) - 1)
    # 200 intervals: a binomial 95 % band around 0.95 is about 0.92-0.98
    assert 0.90 <= coverage <= 0.99, f"coverage {coverage:.3f} over {len(hits)} intervals"
    assert np.median(widths) < np.log(2.5)  # informative intervals, not trivially wide


def test_plate_level_fieller_intervals_cover(campaigns):
    tables, *_ = campaigns
    ok = tables["potency"][tables["potency"]["status"] == "ok"]
    truth = ok["lot"].map(DEFAULT_LOTS)
    coverage = float(((ok["rp_lo"] <= truth) & (truth <= ok["rp_hi"])).mean())
    assert 0.90 <= coverage <= 0.99, f"plate-level coverage {coverage:.3f} over {len(ok)} intervals"


def test_results_do_not_depend_on_batching(campaigns):
    tables, settings, plates = campaigns
    alone = process_batch(plates[5:7], settings).tables
    names = {p.name for p in plates[5:7]}
    for name in ("wells", "lysis", "qc", "fits", "potency", "lots_differ"):
        big = tables[name][tables[name]["plate"].isin(names)].reset_index(drop=True)
        pd.testing.assert_frame_equal(big, alone[name].reset_index(drop=True), check_dtype=False)
