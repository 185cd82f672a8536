"""The per-plate cache of the batch jobs: identical results, reuse only on identical content."""

import json
from dataclasses import replace
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
    assert (a.versions, a.products, a.files) == (b.versions, b.products, b.files)


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
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == len(plates)
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
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == len(plates)


def test_settings_or_template_change_recomputes(tmp_path, plates, monkeypatch):
    process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    other = replace(SETTINGS, qc=replace(SETTINGS.qc, max_cv_pct=15.0))
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
    for entry in (tmp_path / "cache").glob("*.jsonl"):
        entry.write_bytes(b"not a pickle")
    again = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert_same(first, again)


def test_library_versions_enter_the_key_and_the_header(tmp_path, plates, monkeypatch):
    """After `pip install -U lmfit` (or numpy, pandas, ...) every plate is recomputed, none read back."""
    from cr51 import digests, store

    process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    other = {**digests.software(), "libraries": {**digests.library_versions(), "lmfit": "9.9.9"}}
    monkeypatch.setattr(store, "software", lambda: other)
    monkeypatch.setattr(batch, "software_digest", lambda: "another software digest")
    calls = forbid_compute(monkeypatch, allowed={p.name for p in plates})
    process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert sorted(calls) == sorted(p.name for p in plates)
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == len(plates)  # the old entries were pruned


def rewrite_header(path: Path, **changes) -> None:
    import json

    data = path.read_bytes()
    end = data.index(b"\n")
    head = {**json.loads(data[:end]), **changes}
    path.write_bytes(json.dumps(head).encode() + data[end:])


def test_an_entry_of_other_software_under_the_same_key_is_recomputed_with_a_note(tmp_path, plates, caplog):
    from cr51 import digests

    first = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    old = {**digests.software(), "libraries": {**digests.library_versions(), "numpy": "1.0.0"}}
    for entry in (tmp_path / "cache").glob("*.jsonl"):
        rewrite_header(entry, software=old)
    with caplog.at_level("WARNING", logger="cr51.batch"):
        again = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert_same(first, again)
    notes = [r.getMessage() for r in caplog.records if "recomputing" in r.getMessage()]
    assert len(notes) == len(plates) and all("other software" in n for n in notes)


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty", "format"])
def test_a_damaged_entry_is_recomputed_never_used_never_fatal(tmp_path, plates, caplog, damage):
    first = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    rng = np.random.default_rng(5)
    for entry in sorted((tmp_path / "cache").glob("*.jsonl")):
        data = bytearray(entry.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        elif damage == "flip":  # three bytes of the payload
            for i in rng.integers(data.index(b"\n") + 1, len(data), 3):
                data[i] ^= 0x5A
        elif damage == "header":
            data[2] ^= 0x01
        elif damage == "empty":
            data = bytearray()
        entry.write_bytes(bytes(data))
        if damage == "format":
            rewrite_header(entry, format=2)
    with caplog.at_level("WARNING", logger="cr51.batch"):
        again = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert_same(first, again)
    assert sum("recomputing" in r.getMessage() for r in caplog.records) == len(plates)


def test_a_damaged_batch_output_is_refused_with_the_reason(tmp_path, plates):
    from cr51.batch import load_batch, save_batch
    from cr51.store import StaleFile

    path = tmp_path / "b000.jsonl"
    save_batch(process_batch(plates, SETTINGS), path)
    assert load_batch(path).tables.keys()
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StaleFile, match="truncated"):
        load_batch(path)
    path.write_bytes(b"\x80\x05not ours")
    with pytest.raises(StaleFile, match="no header"):
        load_batch(path)


def test_collect_removes_an_unusable_batch_output_and_says_why(tmp_path, plates):
    from cr51.batch import load_batches, save_batch

    good, bad = tmp_path / "b000.jsonl", tmp_path / "b001.jsonl"
    save_batch(process_batch(plates[:2], SETTINGS), good)
    save_batch(process_batch(plates[2:], SETTINGS), bad)
    assert len(load_batches([str(good), str(bad)])) == 2
    rewrite_header(bad, format=1)
    with pytest.raises(RuntimeError, match="has format 1.*removed; the next run recomputes it"):
        load_batches([str(good), str(bad)])
    assert good.exists() and not bad.exists()


class _Planted:
    """What an attacker with write access to results/ would plant: unpickling it runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_with_a_valid_header_never_runs(tmp_path, plates, caplog):
    """Nothing under results/ is unpickled: a cache entry or batch file holding a pickle, even under a
    correct header and checksum, is data that does not decode; it is recomputed (or refused), never run."""
    import pickle

    from cr51 import store
    from cr51.batch import BATCH_KIND, PLATE_KIND, STORE_FORMAT, load_batch
    from cr51.store import StaleFile

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Planted(marker))
    first = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    for entry in (tmp_path / "cache").glob("*.jsonl"):
        store.write(entry, PLATE_KIND, STORE_FORMAT, payload)  # a valid header and checksum
    with caplog.at_level("WARNING", logger="cr51.batch"):
        again = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert_same(first, again)
    assert not marker.exists()
    assert sum("does not hold a plate's results" in r.getMessage() for r in caplog.records) == len(plates)
    store.write(tmp_path / "b000.jsonl", BATCH_KIND, STORE_FORMAT, payload)
    with pytest.raises(StaleFile, match="does not hold a batch output"):
        load_batch(tmp_path / "b000.jsonl")
    assert not marker.exists()
    # and the code path that would have run it is really the one tested: pickle itself would
    pickle.loads(payload)
    assert marker.exists()


# --- the batch's previous output: unchanged plates taken over unread ----------------------------


def _run(tmp_path, plates, previous=None):
    cache = PlateCache(tmp_path / "cache", SETTINGS)
    return process_batch(plates, SETTINGS, cache, tmp_path / "results", previous)


def spy_cache_reads(monkeypatch):
    keys = []
    real = PlateCache.get

    def get(self, key):
        keys.append(key)
        return real(self, key)

    monkeypatch.setattr(PlateCache, "get", get)
    return keys


def test_unchanged_plates_are_taken_over_from_the_previous_output_unread(tmp_path, plates, monkeypatch):
    first = _run(tmp_path, plates)
    assert set(first.sources) == {p.name for p in plates} and first.stats
    export = Path(plates[0].export)
    export.write_text(export.read_text() + "\n")  # p0 changes; the others do not
    plain = process_batch(plates, SETTINGS)  # what computing every plate gives
    calls, reads = forbid_compute(monkeypatch, allowed={"p0"}), spy_cache_reads(monkeypatch)
    second = _run(tmp_path, plates, previous=first)
    assert calls == ["p0"]
    cache = PlateCache(tmp_path / "cache", SETTINGS)
    assert reads == [cache.key(plates[0], 10**9)]  # no other entry read
    for table in first.rows:
        assert [r for r in second.rows[table] if r[0] != "p0"] == [r for r in first.rows[table] if r[0] != "p0"]
    assert_same(second, plain)
    # the taken-over plates' entries are still used: not pruned
    assert {f"{cache.key(p, 10**9)}.jsonl" for p in plates[1:]} <= {e.name for e in (tmp_path / "cache").iterdir()}


def test_a_plate_whose_page_changed_on_disk_is_read_back_and_its_page_rewritten(tmp_path, plates, monkeypatch):
    first = _run(tmp_path, plates)
    page = tmp_path / "results" / first.files["p1"][0]
    good = page.read_bytes()
    page.write_bytes(good[:-100])  # damaged (or deleted: the same)
    calls, reads = forbid_compute(monkeypatch), spy_cache_reads(monkeypatch)
    second = _run(tmp_path, plates, previous=first)
    assert calls == [] and reads == [PlateCache(tmp_path / "cache", SETTINGS).key(plates[1], 10**9)]
    assert page.read_bytes() == good
    assert second.stats[first.files["p1"][0]] != first.stats[first.files["p1"][0]]
    assert_same(second, first)


def test_a_plate_that_failed_is_never_taken_over(tmp_path, plates, monkeypatch):
    real = batch.process_plate

    def failing(plate, settings):
        if plate.name == "p2":
            raise RuntimeError("a bug")
        return real(plate, settings)

    monkeypatch.setattr(batch, "process_plate", failing)
    first = _run(tmp_path, plates)
    assert "p2" not in first.sources
    monkeypatch.setattr(batch, "process_plate", real)
    calls = forbid_compute(monkeypatch, allowed={"p2"})
    second = _run(tmp_path, plates, previous=first)
    assert calls == ["p2"]
    assert "p2" in second.sources and second.rows["qc"] != first.rows["qc"]


def test_other_settings_take_nothing_over(tmp_path, plates, monkeypatch):
    first = _run(tmp_path, plates)
    other = replace(SETTINGS, qc=replace(SETTINGS.qc, max_cv_pct=15.0))
    calls = forbid_compute(monkeypatch, allowed={p.name for p in plates})
    process_batch(plates, other, PlateCache(tmp_path / "cache", other), tmp_path / "results", first)
    assert sorted(calls) == sorted(p.name for p in plates)


def test_the_previous_output_is_kept_by_a_hard_link_and_checked(tmp_path, plates):
    out = _run(tmp_path, plates)
    path, keep = tmp_path / "batches" / "b001.jsonl", tmp_path / "cache"
    batch.save_batch(out, path, keep_in=keep)
    path.unlink()  # what Snakemake does before it runs the job again
    again = batch.load_previous(keep, path)
    assert again is not None and (again.rows, again.sources, again.stats) == (out.rows, out.sources, out.stats)
    assert batch.load_previous(keep, tmp_path / "batches" / "b002.jsonl") is None  # another batch's
    link = keep / batch.PREVIOUS
    link.write_bytes(link.read_bytes()[:-5])
    assert batch.load_previous(keep, path) is None  # damaged: the plates come from the cache


def test_a_batch_output_round_trips_with_hostile_text_and_refuses_bad_offsets(tmp_path):
    from cr51 import store
    from cr51.batch import BATCH_KIND, STORE_FORMAT, BatchOutput, batch_to_payload, load_batch, save_batch
    from cr51.store import StaleFile
    from cr51.tables import Rows

    rows = {
        "qc": [("p\n1", Rows.of_text("qc", 'p\n1,"a ""b""\nc",é✓\n')), ("p2", Rows.of_text("qc", "p2,x\n"))],
        "wells": [("p2", Rows.of_text("wells", "p2,\u202eevil\n"))],
    }
    out = BatchOutput(rows, {"p\n1": 1, "p2": 2}, {"p2": {"A": "Ω"}}, {"p2": ["plates/x.html"]}, {"p2": "s"}, {})
    save_batch(out, tmp_path / "b000.jsonl")
    again = load_batch(tmp_path / "b000.jsonl")
    assert (again.rows, again.versions, again.products, again.files, again.sources) == (
        out.rows, out.versions, out.products, out.files, out.sources,
    )  # fmt: skip
    payload = batch_to_payload(out)
    head, _, body = payload.partition(b"\n")

    def edited(change) -> bytes:
        meta = json.loads(head)
        change(meta)
        return json.dumps(meta).encode() + b"\n" + body

    bads = {
        "truncated rows": head + b"\n" + body[:-1],
        "another total": head.replace(b'"bytes":', b'"bytes":1') + b"\n" + body,
        "no rows section": head,
        "a size too many": edited(lambda m: m["index"]["wells"]["sizes"].append(1)),
        "sizes past the end": edited(lambda m: m["index"]["wells"].update(sizes=[10**6])),
        "a plate outside the list": edited(lambda m: m["index"]["wells"].update(at=[7])),
        "a negative position": edited(lambda m: m["index"]["wells"].update(at=[-1])),
        "a zero size": edited(lambda m: m["index"]["qc"].update(sizes=[0, m["index"]["qc"]["sizes"][1]])),
    }
    for what, bad in bads.items():
        store.write(tmp_path / "b001.jsonl", BATCH_KIND, STORE_FORMAT, bad)
        with pytest.raises(StaleFile, match="does not hold a batch output"):
            load_batch(tmp_path / "b001.jsonl")
            pytest.fail(what)


def test_a_plate_that_takes_too_long_is_stopped_rejected_with_the_reason_and_the_batch_goes_on(
    tmp_path, plates, monkeypatch
):
    import signal
    import time

    from cr51 import plate as plate_mod

    real = plate_mod.load_layout

    def slow(path, **kwargs):
        if Path(path).name == "p1.toml":
            time.sleep(60)  # a layout whose reading hangs, inside a stage with its own except Exception
        return real(path, **kwargs)

    monkeypatch.setattr(plate_mod, "load_layout", slow)
    cache = PlateCache(tmp_path / "cache", SETTINGS)
    out = process_batch(plates, SETTINGS, cache, max_plate_seconds=2.0)
    files = out.tables["files"]
    p1 = files[files["plate"] == "p1"]
    assert set(p1["status"]) == {"rejected"}
    assert p1["reason"].str.contains("longer than max_plate_seconds = 2 s").all()
    assert set(out.tables["qc"]["plate"]) == {"p0", "p2"}  # the others went on
    assert "p1" not in out.sources and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.default_int_handler, None)
    # not cached: with the limit lifted the plate is computed
    monkeypatch.setattr(plate_mod, "load_layout", real)
    again = process_batch(plates, SETTINGS, PlateCache(tmp_path / "cache", SETTINGS))
    assert "p1" in set(again.tables["qc"]["plate"])


def test_the_time_limit_is_a_setting_that_reaches_the_batch_jobs():
    from cr51.settings import Settings

    assert Settings.from_config({}).max_plate_seconds == 300
    assert Settings.from_config({"max_plate_seconds": 2.5}).max_plate_seconds == 2.5
    with pytest.raises(Exception, match="max_plate_seconds"):
        Settings.from_config({"max_plate_seconds": 0})
    smk = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "plates.smk").read_text()
    assert "max_plate_seconds=SETTINGS.max_plate_seconds" in smk
