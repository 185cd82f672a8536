"""The drop folder's sha256 by stat (cr51.statcache): unchanged files are not read again, any write is seen."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from cr51 import archive, metacache, statcache
from cr51.simulate import simulate_plate, write_plate
from cr51.statcache import StatCache


def later() -> int:
    """A hashing time long after the files were written just now."""
    return time.time_ns() + 10 * statcache.MARGIN_NS


def test_an_unchanged_file_is_known_across_runs(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"x" * 100)
    cache = StatCache(tmp_path / "c.json")
    assert cache.known(str(f), os.stat(f)) is None
    cache.record(str(f), os.stat(f), "a" * 64, later())
    cache.save()
    again = StatCache(tmp_path / "c.json")
    assert again.known(str(f), os.stat(f)) == "a" * 64
    again.save()  # kept: it was looked up
    assert StatCache(tmp_path / "c.json").known(str(f), os.stat(f)) == "a" * 64


@pytest.mark.parametrize(
    "change",
    [
        "rewritten, same size, modification time set back (cp -p, rsync -t)",
        "renamed over by another file",
        "appended",
    ],
)
def test_any_write_is_a_miss(tmp_path, change):
    f = tmp_path / "a.csv"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    cache = StatCache(tmp_path / "c.json")
    cache.record(str(f), st, "a" * 64, later())
    cache.save()
    if change.startswith("rewritten"):
        time.sleep(0.01)
        f.write_bytes(b"y" * 100)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change.startswith("renamed"):
        g = tmp_path / "b.csv"
        g.write_bytes(b"y" * 100)
        os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(g, f)
    else:
        with open(f, "ab") as fh:
            fh.write(b"z")
    assert StatCache(tmp_path / "c.json").known(str(f), os.stat(f)) is None


def test_a_file_modified_just_before_it_was_hashed_is_not_kept(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"x")
    cache = StatCache(tmp_path / "c.json")
    cache.record(str(f), os.stat(f), "a" * 64)  # hashed now: within the margin of its last write
    cache.save()
    assert StatCache(tmp_path / "c.json").known(str(f), os.stat(f)) is None


@pytest.mark.parametrize("text", ["", "not json", '{"format": 1, "files": []}', '{"format": 1, "files": {"x": 1}}'])
def test_a_damaged_cache_is_empty(tmp_path, text):
    (tmp_path / "c.json").write_text(text)
    f = tmp_path / "x"
    f.write_text("1")
    assert StatCache(tmp_path / "c.json").known("x", os.stat(f)) is None


def _scan(raw, results, layouts_dir):
    return archive.scan_inbox(
        raw, results, layouts_dir=layouts_dir, batch_count=4, settle_seconds=0, max_bytes=10**7,
        min_share=0.5, confirm_cleanout=False, stale_after_hours=24,
    )  # fmt: skip


def test_a_run_with_nothing_new_reads_no_drop_folder_file(tmp_path, layouts_dir, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_plate(raw, simulate_plate(f"p{i}", np.random.default_rng(i)), "well_list")
    monkeypatch.setattr(statcache, "MARGIN_NS", -(10**12))  # the files count as old: no waiting
    first = _scan(raw, tmp_path / "results", layouts_dir)
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        if str(path).startswith(str(raw)):
            opened.append(os.path.basename(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(archive, "open", spy, raising=False)
    monkeypatch.setattr(metacache, "read_bytes", lambda *a, **k: pytest.fail("a known layout was read"))
    again = _scan(raw, tmp_path / "results", layouts_dir)
    assert opened == []
    assert {n: p.digest for n, p in again.plates.items()} == {n: p.digest for n, p in first.plates.items()}
    # a re-export with its modification time set back is read, and is a new version
    export = raw / "p1.csv"
    st = os.stat(export)
    export.write_bytes(export.read_bytes().replace(b",", b", ", 1))
    os.utime(export, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = _scan(raw, tmp_path / "results", layouts_dir)
    assert opened == ["p1.csv"]
    assert third.plates["p1"].version == 2 and third.plates["p1"].digest != first.plates["p1"].digest
    assert third.plates["p0"].digest == first.plates["p0"].digest


def test_result_files_are_hashed_only_when_their_stat_changed(tmp_path, monkeypatch):
    from cr51 import store

    tables = [str(tmp_path / f"{n}.csv") for n in ("wells", "qc")]
    for t in tables:
        with open(t, "w") as fh:
            fh.write("plate,x\np1,1\n")
    manifest = tmp_path / "manifest.json"
    store.write_results_manifest(manifest, tables, [])
    hashed = []
    real = store.result_digest
    monkeypatch.setattr(store, "result_digest", lambda p: hashed.append(os.path.basename(p)) or real(p))
    assert store.check_results(manifest, tables, []) == ([], [])
    assert hashed == []  # nothing read
    st = os.stat(tables[0])
    with open(tables[0], "w") as fh:
        fh.write("plate,x\np1,2\n")  # same size; its modification time set back
    os.utime(tables[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.check_results(manifest, tables, []) == ([tables[0]], [])
    assert hashed == ["wells.csv"]
    os.unlink(tables[1])
    assert store.check_results(manifest, tables, [])[0] == tables


def test_a_result_file_is_hashed_once_a_process_until_it_changes(tmp_path, monkeypatch):
    from cr51 import digests

    f = tmp_path / "wells.csv"
    f.write_text("plate\np1\n")
    calls = []
    real = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda p: calls.append(p) or real(p))
    first = digests.result_digest(f)
    assert digests.result_digest(f) == first and len(calls) == 1
    f.write_text("plate\np2\n")  # same size
    assert digests.result_digest(f) != first and len(calls) == 2
    f.unlink()
    assert digests.result_digest(f) is None


def test_a_run_with_nothing_new_stats_each_drop_folder_file_once(tmp_path, layouts_dir, monkeypatch):
    # the scan's own stat (the one its settling was judged by) is what the archive goes by
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_plate(raw, simulate_plate(f"p{i}", np.random.default_rng(i)), "well_list")
    monkeypatch.setattr(statcache, "MARGIN_NS", -(10**12))
    first = _scan(raw, tmp_path / "results", layouts_dir)
    statted = []
    real_stat = os.stat

    def spy(path, *args, **kwargs):
        if str(path).startswith(str(raw) + os.sep):  # a file of the drop folder (not the folder itself)
            statted.append(os.path.basename(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", spy)
    again = _scan(raw, tmp_path / "results", layouts_dir)
    assert statted == []  # the scan's listing statted them (os.DirEntry.stat), nothing else did
    assert again == first


def test_bytes_changed_after_the_stat_are_kept_but_not_recorded_by_it(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"x" * 100)
    before = os.stat(f)
    time.sleep(0.01)
    f.write_bytes(b"y" * 120)  # changed after the scan took its stat
    stats = StatCache(tmp_path / "c.json")
    kept = archive.Archive(tmp_path / "results", stats).keep(str(f), before)
    assert kept.sha256 == hashlib.sha256(b"y" * 120).hexdigest()  # the bytes read are the bytes kept
    assert stats.known(str(f), before) is None and stats.known(str(f), os.stat(f)) is None


@pytest.mark.parametrize("caller_gc", [True, False])
def test_the_scan_runs_with_the_garbage_collector_paused_then_restored(tmp_path, layouts_dir, monkeypatch, caller_gc):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_plate(raw, simulate_plate("p0", np.random.default_rng(0)), "well_list")
    during = []
    real_admit = archive.admit
    monkeypatch.setattr(archive, "admit", lambda *a, **k: during.append(gc.isenabled()) or real_admit(*a, **k))
    (gc.enable if caller_gc else gc.disable)()
    try:
        _scan(raw, tmp_path / "results", layouts_dir)
        assert during == [False] and gc.isenabled() is caller_gc
        for f in raw.iterdir():
            f.unlink()  # an empty inbox: InboxShrunk, and the collector is restored all the same
        with pytest.raises(archive.InboxShrunk):
            _scan(raw, tmp_path / "results", layouts_dir)
        assert gc.isenabled() is caller_gc
    finally:
        gc.enable()


def test_a_version_reads_back_as_it_was_written():
    stored = [archive.Stored(f"f{i}.toml", f"{i}" * 64) for i in range(4)]
    for templates in ((), tuple(stored[2:])):
        v = archive.Version(3, stored[0], stored[1], templates, "2026-01-01T00:00:00+00:00")
        assert archive.Version.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    damaged = {**v.to_dict(), "templates": None}
    with pytest.raises(TypeError):  # as before: a damaged record is an error, not a plate without templates
        archive.Version.from_dict(damaged)


def test_the_registry_reserialises_only_the_records_a_run_changed(tmp_path, monkeypatch):
    results = tmp_path / "results"
    files = []
    for i in range(4):
        for ext in ("toml", "csv"):
            f = tmp_path / f"p{i}.{ext}"
            f.write_text(f"{i} {ext}\n")
            files.append(str(f))
    reg = archive.Archive(results)
    for i in range(3):
        reg.admit(f"p{i}", files[2 * i], files[2 * i + 1], (), 0.0)
    reg.save()
    reg = archive.Archive(results)  # a run: reads the registry, changes three records, adds one
    (tmp_path / "p0.csv").write_text("re-export\n")
    reg.admit("p0", files[0], files[1], (), 1.0)  # a new version
    reg.plates["p1"].missing_since = "2026-01-01T00:00:00+00:00"
    reg.admit("p3", files[6], files[7], (), 1.0)  # a new plate
    serialised = []
    real = archive.PlateRecord.to_dict
    monkeypatch.setattr(archive.PlateRecord, "to_dict", lambda self: serialised.append(self) or real(self))
    reg.save()
    assert sorted(r.versions[0].layout.name for r in serialised) == ["p0.toml", "p1.toml", "p3.toml"]  # not p2
    monkeypatch.setattr(archive.PlateRecord, "to_dict", real)
    written = (results / archive.ARCHIVE / archive.REGISTRY).read_text(encoding="utf-8")
    every = json.dumps(reg._data(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert written == every  # as if every record had been serialised
    again = archive.Archive(results)
    assert again.plates == reg.plates and [len(r.versions) for r in again.plates.values()] == [2, 1, 1, 1]


def test_a_batch_of_first_versions_does_not_read_the_history(tmp_path, monkeypatch):
    results = tmp_path / "results"
    layout, export = tmp_path / "p0.toml", tmp_path / "p0.csv"
    layout.write_text("layout\n")
    export.write_text("first\n")
    reg = archive.Archive(results)
    reg.admit("p0", str(layout), str(export), (), 0.0)
    export.write_text("re-export\n")
    reg.admit("p0", str(layout), str(export), (), 1.0)
    reg.save()
    entry = {"version": 1, "accepted_at": "x", "replaced_at": None, "potency": []}
    archive.write_json(
        results / archive.ARCHIVE / archive.HISTORY, {"format": archive.FORMAT, "plates": {"p0": [entry]}}
    )
    kept = archive.fallbacks(results, {"p0": 2, "p1": 1})  # p0's v2 falls back to its accepted v1
    assert list(kept) == ["p0"] and kept["p0"][0] == 1 and kept["p0"][2].endswith("/p0.csv")
    assert Path(kept["p0"][2]).read_text() == "first\n"
    monkeypatch.setattr(archive, "read_json", lambda *a: pytest.fail("the history was read"))
    assert archive.fallbacks(results, {"p0": 1, "p1": 1, "p2": 0}) == {}


@pytest.mark.parametrize(
    "text",
    ["a,b\n1,2\n3,4\n", 'a,b\n"x,\ny",2\n', "a,b\n1,2\n\n3,4\n", "a,b\n1\n1,2,3\n", "a,b\n", "", "a\n\n"],
    ids=["plain", "quoted-newline", "blank-row", "ragged", "header-only", "empty", "one-column-blank"],
)
def test_csv_rows_are_dictreaders_and_read_once_until_the_file_changes(tmp_path, monkeypatch, text):
    import csv
    import io

    from cr51 import digests

    f = tmp_path / "files.csv"
    f.write_text(text, encoding="utf-8", newline="")
    assert digests.csv_rows(f) == list(csv.DictReader(io.StringIO(text, newline="")))
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    first = digests.csv_rows(f)
    assert digests.csv_rows(f) is first and opened == []  # unchanged: not read again
    time.sleep(0.01)
    f.write_text("a,b\n9,9\n", encoding="utf-8", newline="")  # rewritten: read again
    assert digests.csv_rows(f) == [{"a": "9", "b": "9"}] and opened
