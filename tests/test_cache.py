"""The per-plate cache of the batch jobs: identical results, reuse only on identical content."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BATCH_SETTINGS

from cr51 import batch
from cr51.batch import PlateCache, process_batch
from cr51.plate import PlateInput
from cr51.simulate import simulate_plate, write_plate

SETTINGS = BATCH_SETTINGS


@pytest.fixture
def plates(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = []
    for i, fmt in enumerate(["well_list", "plate_grid", "wizard2"]):
        p = simulate_plate(f"p{i}", np.random.default_rng(i), fmt=fmt)
        write_plate(raw, p, fmt)
        out.append(PlateInput(p.name, str(raw / f"{p.name}.toml"), str(raw / p.export_name)))
    (raw / "bad.toml").write_text('[meta]\npath = "bad.csv"\n[well.A1]\nrole = "spontaneous"\n')
    (raw / "bad.csv").write_text("Well,CPM\nA1,abc\n")
    out.append(PlateInput("bad", str(raw / "bad.toml"), str(raw / "bad.csv")))
    return out


def assert_same(a, b):
    assert a.tables.keys() == b.tables.keys()
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_dtype=False)
        assert a.tables[name].to_csv(index=False) == b.tables[name].to_csv(index=False)
    assert a.rows == b.rows
    assert a.sections == b.sections


def forbid_compute(monkeypatch, allowed=()):
    real = batch.process_plate
    calls = []

    def guarded(plate, settings):
        calls.append(plate.name)
        assert plate.name in allowed, f"{plate.name} recomputed although cached"
        return real(plate, settings)

    monkeypatch.setattr(batch, "process_plate", guarded)
    return calls


def test_cached_results_equal_uncached(tmp_path, plates, monkeypatch):
    plain = process_batch(plates, SETTINGS)
    cold = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert_same(plain, cold)
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == len(plates)
    calls = forbid_compute(monkeypatch)
    warm = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert calls == []
    assert_same(plain, warm)


def test_changed_content_recomputes_only_that_plate(tmp_path, plates, monkeypatch):
    process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    export = Path(plates[0].export)
    export.write_text(export.read_text().replace("CPM", "CPM", 1) + "\n")  # same data, new bytes
    calls = forbid_compute(monkeypatch, allowed={"p0"})
    process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert calls == ["p0"]
    # the superseded entry was pruned
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == len(plates)


def test_settings_or_template_change_recomputes(tmp_path, plates, monkeypatch):
    process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    other = {**SETTINGS, "qc": {"max_cv_pct": 15}}
    calls = forbid_compute(monkeypatch, allowed={p.name for p in plates})
    process_batch(plates, other, PlateCache(tmp_path / "cache", other))
    assert sorted(calls) == sorted(p.name for p in plates)
    template = tmp_path / "t.toml"
    template.write_text("[expt]\ntargets_per_well = 5000\n")
    with_tmpl = [PlateInput(plates[0].name, plates[0].layout, plates[0].export, (str(template),)), *plates[1:]]
    cache = PlateCache(tmp_path / "cache", other)
    keys = cache.key(plates[0], 10**9), cache.key(with_tmpl[0], 10**9)
    assert keys[0] != keys[1]
    template.write_text("[expt]\ntargets_per_well = 6000\n")
    assert cache.key(with_tmpl[0], 10**9) != keys[1]


def test_corrupt_entry_is_recomputed(tmp_path, plates):
    cache = PlateCache(tmp_path / "cache", SETTINGS)
    first = process_batch(plates, SETTINGS, cache)
    for entry in (tmp_path / "cache").glob("*.pkl"):
        entry.write_bytes(b"not a pickle")
    again = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert_same(first, again)
