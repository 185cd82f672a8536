"""The drop-folder scan: plates, pending files, refused layouts, stable batches."""

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from cr51.scan import BIDI, batch_of, child_prefix, file_name, scan, unusable_name

LAYOUT = '[meta]\npath = "{export}"\n[well.A1]\nrole = "spontaneous"\n'


def write(d, name, text="x", age=1000.0):
    p = d / name
    p.write_text(text)
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def run(d, layouts, **kw):
    return scan(d, layouts_dir=layouts, batch_count=kw.pop("batch_count", 8), settle_seconds=kw.pop("settle", 60), **kw)


def by_file(s):
    return {o.file: o for o in s.others}


def test_plate_pairs_layout_and_export(tmp_path, layouts_dir):
    write(tmp_path, "p1.toml", LAYOUT.format(export="p1.csv"))
    write(tmp_path, "p1.csv")
    write(tmp_path, "README.md")
    write(tmp_path, ".hidden")
    s = run(tmp_path, layouts_dir)
    assert list(s.plates) == ["p1"]
    p = s.plates["p1"]
    assert p.export == str(tmp_path / "p1.csv") and p.batch == batch_of("p1", 8)
    # README.md is documentation, not listed; a hidden file is listed as ignored (never opened)
    assert [(o.file, o.status) for o in s.others] == [(".hidden", "ignored")]
    assert sorted(os.path.basename(f) for f in s.files) == ["p1.csv", "p1.toml"]


def test_pending_and_refused(tmp_path, layouts_dir):
    write(tmp_path, "orphan.csv")  # no layout names it
    write(tmp_path, "wait.toml", LAYOUT.format(export="later.csv"))  # export not there yet
    write(tmp_path, "fresh.toml", LAYOUT.format(export="fresh.csv"))
    write(tmp_path, "fresh.csv", age=5)  # still being written
    write(tmp_path, "bad.toml", "[meta\npath=")
    write(tmp_path, "noexport.toml", '[well.A1]\nrole = "sample"\n')
    write(tmp_path, "evil.toml", '[meta]\npath = "x.csv"\ninclude = "../../etc/passwd"\n')
    write(tmp_path, "abs.toml", '[meta]\npath = "x.csv"\ninclude = "/etc/passwd"\n')
    write(tmp_path, "up.toml", '[meta]\npath = "../x.csv"\n')
    s = run(tmp_path, layouts_dir)
    assert s.plates == {}
    f = by_file(s)
    assert f["orphan.csv"].status == "pending" and "no layout names" in f["orphan.csv"].reason
    assert f["wait.toml"].status == "pending" and "later.csv" in f["wait.toml"].reason
    assert f["fresh.toml"].status == "pending" and f["fresh.csv"].status == "pending"
    assert "settle_seconds" in f["fresh.csv"].reason
    assert f["bad.toml"].status == "rejected" and "not valid TOML" in f["bad.toml"].reason
    assert f["noexport.toml"].status == "rejected" and "[meta] path" in f["noexport.toml"].reason
    for name in ("evil.toml", "abs.toml"):
        assert f[name].status == "rejected" and "bare file name" in f[name].reason
    assert f["up.toml"].status == "rejected"


def test_unassigned_files_are_the_files_in_no_plate(tmp_path, layouts_dir):
    # collect's raw inputs: a plate's own files reach it through its batch
    write(tmp_path, "p1.toml", LAYOUT.format(export="p1.csv"))
    write(tmp_path, "p1.csv")
    write(tmp_path, "orphan.csv")
    write(tmp_path, "bad.toml", "[meta\npath=")
    write(tmp_path, "a{x}.csv")  # unusable name: in files.csv, never a Snakemake input
    s = run(tmp_path, layouts_dir)
    assert list(s.plates) == ["p1"]
    assert sorted(os.path.basename(f) for f in s.unassigned_files()) == ["bad.toml", "orphan.csv"]


def test_settle_zero_accepts_fresh_files(tmp_path, layouts_dir):
    write(tmp_path, "fresh.toml", LAYOUT.format(export="fresh.csv"), age=0)
    write(tmp_path, "fresh.csv", age=0)
    assert list(run(tmp_path, layouts_dir, settle=0).plates) == ["fresh"]


def test_export_named_twice_is_refused(tmp_path, layouts_dir):
    write(tmp_path, "a.toml", LAYOUT.format(export="e.csv"))
    write(tmp_path, "b.toml", LAYOUT.format(export="e.csv"))
    write(tmp_path, "e.csv")
    s = run(tmp_path, layouts_dir)
    f = by_file(s)
    assert s.plates == {}
    assert f["a.toml"].status == f["b.toml"].status == f["e.csv"].status == "rejected"
    assert "several layouts" in f["a.toml"].reason


def test_includes_resolve_in_drop_folder_then_templates(tmp_path, layouts_dir):
    write(tmp_path, "tmpl.toml", '[well.A2]\nrole = "maximum"\n')
    write(tmp_path, "p.toml", '[meta]\npath = "p.csv"\ninclude = ["tmpl.toml", "standard_96.toml"]\n')
    write(tmp_path, "p.csv")
    write(tmp_path, "missing.toml", '[meta]\npath = "m.csv"\ninclude = "nope.toml"\n')
    write(tmp_path, "m.csv")
    s = run(tmp_path, layouts_dir)
    assert s.plates["p"].includes == (str(tmp_path / "tmpl.toml"), str(layouts_dir / "standard_96.toml"))
    f = by_file(s)
    assert f["tmpl.toml"].status == "ok" and "template" in f["tmpl.toml"].reason
    assert f["missing.toml"].status == "rejected" and "not found" in f["missing.toml"].reason
    assert f["m.csv"].status == "rejected"


def test_batches_are_stable_and_spread():
    names = [f"plate{i:04d}" for i in range(1000)]
    batches = [batch_of(n, 16) for n in names]
    assert batches == [batch_of(n, 16) for n in names]  # pure function of the name
    counts = {b: batches.count(b) for b in set(batches)}
    assert len(counts) == 16 and min(counts.values()) > 30


def test_hostile_names_are_just_data(tmp_path, layouts_dir):
    name = "$(touch pwned); `x` 'q' -rf é"
    write(tmp_path, f"{name}.toml", LAYOUT.format(export=f"{name}.csv").replace("\\", ""))
    write(tmp_path, f"{name}.csv")
    s = run(tmp_path, layouts_dir)
    assert list(s.plates) == [name]
    assert not (tmp_path / "pwned").exists()


def test_missing_raw_dir_is_empty(tmp_path, layouts_dir):
    s = run(tmp_path / "nope", layouts_dir)
    assert s.plates == {} and s.others == [] and s.files == []


def test_names_the_workflow_cannot_use_are_refused(tmp_path, layouts_dir):
    write(tmp_path, "a{x}.toml", LAYOUT.format(export="a{x}.csv"))
    write(tmp_path, "a{x}.csv")
    write(tmp_path, "ok.toml", LAYOUT.format(export="b}.csv"))
    write(tmp_path, "line\nbreak.csv")
    (tmp_path / "ok.csv").write_text("x")
    os.rename(tmp_path / "ok.csv", os.fsencode(tmp_path) + b"/caf\xe9.csv")
    s = run(tmp_path, layouts_dir)
    f = by_file(s)
    assert s.plates == {}
    assert all(f[n].status == "rejected" for n in ("a{x}.toml", "a{x}.csv", "ok.toml", "line\nbreak.csv"))
    assert "'{' or '}'" in f["a{x}.csv"].reason and "'{' or '}'" in f["ok.toml"].reason
    assert "control character" in f["line\nbreak.csv"].reason
    assert "UTF-8" in f[os.fsdecode(b"caf\xe9.csv")].reason
    assert not any("{" in p or "\n" in p for p in s.files)  # never given to Snakemake as inputs


def test_meta_cache_gives_the_same_scan_and_skips_parsing_unchanged_layouts(tmp_path, layouts_dir, monkeypatch):
    import tomllib

    raw = tmp_path / "raw"
    raw.mkdir()
    write(raw, "p1.toml", LAYOUT.format(export="p1.csv"))
    write(raw, "p1.csv")
    write(raw, "p2.toml", LAYOUT.format(export="p2.csv") + "[expt]\ndate = 2026-01-05\n")
    write(raw, "p2.csv")
    write(raw, "dated.toml", '[meta]\npath = "d.csv"\nwhen = 2026-01-05\n')  # a date: not JSON, not cached
    write(raw, "d.csv")
    write(raw, "bad.toml", "[meta\npath=")
    cache = tmp_path / "results" / ".scan-cache.json"
    plain = run(raw, layouts_dir)
    first = run(raw, layouts_dir, meta_cache=cache)
    assert first == plain and cache.exists()
    assert len(json.loads(cache.read_text())) == 2  # p1, p2 (dated: not JSON; bad: not TOML)

    real = tomllib.loads
    parsed = []
    monkeypatch.setattr(tomllib, "loads", lambda text: parsed.append(text) or real(text))
    assert run(raw, layouts_dir, meta_cache=cache) == plain
    assert len(parsed) == 2  # only the two not in the cache: dated.toml and bad.toml
    write(raw, "p1.toml", LAYOUT.format(export="other.csv"))  # new content: parsed again
    parsed.clear()
    again = run(raw, layouts_dir, meta_cache=cache)
    assert len(parsed) == 3 and by_file(again)["p1.toml"].reason == "waiting for its export 'other.csv'"
    assert again == run(raw, layouts_dir)
    cache.write_text("{not json")  # a damaged cache is an empty one
    assert run(raw, layouts_dir, meta_cache=cache) == again


def _unusable_reference(name):
    """unusable_name's checks one by one, without its one-pattern shortcut."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "utf-8"
    if re.search(r"[\x00-\x1f\x7f]", name) or "{" in name or "}" in name or BIDI.search(name):
        return "refused"
    return None


@pytest.mark.parametrize(
    "name",
    ["plain.csv", "é.csv", "a{b.csv", "a}b.csv", "tab\there", "del\x7f", "nul\x00", "x\u202ey", "x\u2069y",
     "x\u200ey", "x\u200fy", os.fsdecode(b"caf\xe9.csv"), "\ud800", "x\u202ay", "x\u2066y", "emoji 🧪.csv",
     "x\u2028y", "x\u200dy"],
)  # fmt: skip
def test_unusable_name_refuses_exactly_what_its_checks_refuse(name):
    assert (unusable_name(name) is None) == (_unusable_reference(name) is None)


@pytest.mark.parametrize(
    "path", ["/a/b.csv", "b.csv", "a/b/", "a/.", "a/..", "/", ".", "a//b", "/a/b/./", "x/.hidden", "dir/ é.toml"]
)
def test_file_name_is_paths_name(path):
    assert file_name(path) == Path(path).name


@pytest.mark.parametrize("folder", [".", "/", "//", "raw", "raw/", "./raw", "/tmp//raw/.", "a/../b", "//srv/x"])
def test_child_prefix_joins_as_pathlib_does(folder):
    for name in ("p1.csv", ".hidden", "a b.toml", "é", "..x", "~u"):
        assert child_prefix(Path(folder)) + name == str(Path(folder) / name)


def test_batch_of_is_the_sha256_as_a_number_modulo_the_count():
    for name in ("plate0001", "é", os.fsdecode(b"caf\xe9")):
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
        for count in (1, 4, 7, 1000):
            assert batch_of(name, count) == f"b{int(digest, 16) % count:03d}"


def test_two_layouts_of_one_plate_name_the_last_is_the_plate(tmp_path, layouts_dir):
    # P.TOML sorts first; P.toml, listed after it, is the plate; P.TOML and its export wait
    write(tmp_path, "P.TOML", LAYOUT.format(export="upper.csv"))
    write(tmp_path, "upper.csv")
    write(tmp_path, "P.toml", LAYOUT.format(export="lower.csv"))
    write(tmp_path, "lower.csv")
    seen = {}
    s = run(tmp_path, layouts_dir, stats_out=seen)
    assert s.plates["P"].layout == str(tmp_path / "P.toml") and s.plates["P"].export == str(tmp_path / "lower.csv")
    f = by_file(s)
    assert sorted(f) == ["P.TOML", "upper.csv"]
    assert f["P.TOML"].status == "pending" and "no layout names" in f["P.TOML"].reason
    assert (f["upper.csv"].status, f["upper.csv"].plate, f["upper.csv"].reason) == ("pending", "P", "")
    assert sorted(seen) == sorted([s.plates["P"].layout, s.plates["P"].export])


def test_stats_out_holds_the_stat_each_plate_file_was_judged_by(tmp_path, layouts_dir):
    write(tmp_path, "p1.toml", LAYOUT.format(export="p1.csv"))
    write(tmp_path, "p1.csv")
    write(tmp_path, "orphan.csv")
    seen = {}
    s = run(tmp_path, layouts_dir, stats_out=seen)
    p = s.plates["p1"]
    assert sorted(seen) == sorted([p.layout, p.export])
    for path, st in seen.items():
        now = os.stat(path)
        assert (st.st_ino, st.st_size, st.st_mtime_ns) == (now.st_ino, now.st_size, now.st_mtime_ns)


def test_by_batch_is_plates_in_of_every_batch(tmp_path, layouts_dir):
    for i in range(12):
        write(tmp_path, f"p{i}.toml", LAYOUT.format(export=f"p{i}.csv"))
        write(tmp_path, f"p{i}.csv")
    s = run(tmp_path, layouts_dir, batch_count=3)
    s.plates = dict(reversed(s.plates.items()))  # not in name order
    assert s.by_batch() == {b: s.plates_in(b) for b in s.batches()}
