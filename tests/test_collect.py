"""collect: the result CSVs written from the plates' rendered rows are byte for byte the CSVs written
from the plates' frames concatenated in memory."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BATCH_SETTINGS

from cr51.batch import BatchOutput, load_batch, process_batch, save_batch
from cr51.collect import collect
from cr51.plate import PlateInput, analyse_batch, ingest_batch
from cr51.schema import PLATE_TABLES, Column, Table
from cr51.schema import TABLES as TABLES_BY_NAME
from cr51.simulate import simulate_plate, write_plate
from cr51.tables import (
    Rows,
    concat_frames,
    conform,
    neutralise,
    read_table,
    records,
    render_rows,
    write_rows,
    write_table,
)

SETTINGS = BATCH_SETTINGS
TABLES = list(PLATE_TABLES)


def add(raw: Path, name: str, seed: int, fmt: str = "well_list", **kw) -> PlateInput:
    p = simulate_plate(name, np.random.default_rng(seed), fmt=fmt, **kw)
    write_plate(raw, p, fmt)
    return PlateInput(p.name, str(raw / f"{p.name}.toml"), str(raw / p.export_name))


def plates_of(raw: Path, formats: list[str]) -> list[PlateInput]:
    """Plates of these export formats, one with an outlier, one vehicle layout, one failing QC, a
    rejected plate and a duplicate export (same bytes under another name: dropped by collect)."""
    plates = [add(raw, f"p{i}", i, fmt) for i, fmt in enumerate(formats)]
    plates.append(add(raw, "q_outlier", 11, outlier_well="B3", outlier_factor=2.5))
    plates.append(add(raw, "r_vehicle", 12, layout="vehicle"))
    plates.append(add(raw, "s_highspont", 13, high_spontaneous=True))
    (raw / "bad.toml").write_text('[meta]\npath = "bad.csv"\n[well.A1]\nrole = "spontaneous"\n')
    (raw / "bad.csv").write_text("Well,CPM\nA1,abc\n")
    plates.append(PlateInput("bad", str(raw / "bad.toml"), str(raw / "bad.csv")))
    shutil.copy(raw / "p0.csv", raw / "t_copy.csv")
    (raw / "t_copy.toml").write_text((raw / "p0.toml").read_text().replace('"p0.csv"', '"t_copy.csv"'))
    plates.append(PlateInput("t_copy", str(raw / "t_copy.toml"), str(raw / "t_copy.csv")))
    return plates


def batches_of(plates: list[PlateInput], tmp: Path) -> list[BatchOutput]:
    """Two batches (interleaved names, as hashing gives), as the batch job computes and writes them."""
    outs = []
    for i, part in enumerate((plates[0::2], plates[1::2])):
        save_batch(process_batch(part, SETTINGS), tmp / f"b{i:03d}.jsonl")
        outs.append(load_batch(tmp / f"b{i:03d}.jsonl"))
    return outs


def written(batches: list[BatchOutput], raw: Path, out: Path) -> dict[str, bytes]:
    result = collect(batches, [], str(raw), 20_000_000)
    for name in TABLES:
        result.write(name, out / f"{name}.csv")
    return {name: (out / f"{name}.csv").read_bytes() for name in TABLES}


def in_memory(plates: list[PlateInput], out: Path, dropped: set[str]) -> dict[str, bytes]:
    """The tables computed again as frames, plate by plate (after the batches: a plate computed twice in
    one process gives the same numbers, tests/test_determinism.py), concatenated in plate order
    (``dropped`` plates left out) and written by pandas' to_csv: what writing frames gives, without any
    rendered rows."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for plate in sorted(plates, key=lambda p: p.name):
        t = ingest_batch([plate], SETTINGS)
        t.update(analyse_batch(t["wells"], t["qc"], SETTINGS))
        for name in TABLES:
            parts[name].append(t[name] if name == "files" or plate.name not in dropped else t[name].iloc[:0])
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        frame = concat_frames(parts[name], TABLES_BY_NAME[name].names)
        if name == "files":
            frame = frame.sort_values("file", kind="stable")
        (out / f"{name}.csv").write_bytes(pandas_csv(frame, TABLES_BY_NAME[name]).encode("utf-8"))
    return {name: (out / f"{name}.csv").read_bytes() for name in TABLES}


@pytest.fixture(scope="module", params=["one_format", "mixed_formats"])
def case(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    raw = tmp / "raw"
    raw.mkdir()
    formats = ["well_list", "plate_grid", "xlsx_well_list", "well_list_semicolon"]
    if request.param == "mixed_formats":
        formats += ["wizard2"]  # Rack/Pos tubes: rack and pos where the others have none
    plates = plates_of(raw, formats)
    return request.param, raw, tmp, plates, batches_of(plates, tmp)


def test_rendered_rows_write_the_same_bytes_as_the_tables(case):
    kind, raw, tmp, plates, batches = case
    fast = written(batches, raw, tmp / f"fast_{kind}")
    frames = in_memory(plates, tmp / f"frames_{kind}", {"t_copy"})
    for name in TABLES:
        if name != "files":
            assert fast[name] == frames[name], name
    # files.csv: the same rows, but the duplicate export's rows say so
    files = read_table(tmp / f"fast_{kind}" / "files.csv")
    plain = read_table(tmp / f"frames_{kind}" / "files.csv")
    assert set(files.loc[files["plate"] == "t_copy", "status"]) == {"duplicate"}
    same = files["plate"] != "t_copy"
    pd.testing.assert_frame_equal(files[same].reset_index(drop=True), plain[same].reset_index(drop=True))
    wells = read_table(tmp / f"fast_{kind}" / "wells.csv")
    assert "t_copy" not in set(wells["plate"]) and "p0" in set(wells["plate"])
    assert list(dict.fromkeys(wells["plate"])) == sorted(set(wells["plate"]))  # plate order


SMALL = Table("small", (Column("plate", "text"), Column("n", "int"), Column("x", "float"), Column("ok", "boolean")))


def test_render_rows_neutralises_and_writes_each_kind_alike_whatever_the_dtype():
    import pandas as pd

    df = pd.DataFrame({"plate": ["=cmd", "p"], "n": [1, 2], "x": [0.1, float("nan")], "ok": [True, None]})
    rows = render_rows(df, SMALL)
    assert isinstance(rows, Rows) and rows.table == "small"
    assert rows.text == "'=cmd,1,0.1,True\np,2,,\n"
    # another plate's frame with other dtypes (ints as floats, text as object) renders the same text
    other = df.astype({"n": float, "plate": object})
    assert render_rows(other, SMALL) == rows
    # a missing int prints empty, never "2.0"; columns come in the declared order
    gap = render_rows(df.assign(n=[np.nan, 2.0])[["x", "n", "plate", "ok"]], SMALL)
    assert gap.text == "'=cmd,,0.1,True\np,2,,\n"
    assert render_rows(df.iloc[:0], SMALL) is None


#: Every kind, each column in the dtypes a plate's frames bring (and some they might): the text of
#: ``render_rows`` must be what ``write_table`` (pandas' ``to_csv``) writes, cell for cell.
HOSTILE = Table(
    "hostile",
    (Column("name", "text"), Column("name_str", "text"), Column("mixed", "text"), Column("x", "float"),
     Column("x_int", "float"), Column("x_obj", "float"), Column("x_gappy", "float"), Column("x_ea", "float"),
     Column("x32", "float"), Column("n", "int"), Column("n_float", "int"), Column("n_obj", "int"),
     Column("n_ea", "int"), Column("flag", "bool"), Column("flag_gap", "bool"), Column("verdict", "boolean"),
     Column("verdict_obj", "boolean"), Column("absent_text", "text"), Column("absent_int", "int"),
     Column("absent_bool", "bool")),
)  # fmt: skip
NASTY_TEXT = ["a,b", 'say "hi"', "two\nlines", "cr\rhere", "=1+1", "+cmd", "-2", "-x", "@SUM(A1)", "\tlead",
              "", "café ✓", " padded ", "'quoted'", "-1.5e3", "a;b", "last"]  # fmt: skip


def hostile_frame() -> pd.DataFrame:
    n = len(NASTY_TEXT)
    floats = [0.1 + 0.2, -0.0, float("inf"), float("-inf"), 1e-05, 1e16, 5e-324, 1.7976931348623157e308,
              123456789.123, float("nan"), 2.5, 1 / 3, -7.0, 1e22, 0.0001, 100.0, float("nan")]  # fmt: skip
    ints = [0, -1, 2**40, 7, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    gap_ints = [None if i % 4 == 1 else v for i, v in enumerate(ints)]
    return pd.DataFrame(
        {
            "extra": range(n),  # not in the table: left out
            "name": pd.Series([None if i == 3 else v for i, v in enumerate(NASTY_TEXT)], dtype=object),
            "name_str": pd.Series([pd.NA if i == 5 else v for i, v in enumerate(NASTY_TEXT)], dtype="string"),
            "mixed": pd.Series([7, 2.5, True, None, float("nan"), pd.NA, "=x", *NASTY_TEXT[:10]], dtype=object),
            "x": floats,
            "x_int": ints,
            "x_obj": pd.Series(floats, dtype=object),  # a merge's column: Python floats in an object column
            "x_gappy": pd.Series([None if i % 3 == 0 else v for i, v in enumerate(floats)], dtype=object),
            "x_ea": pd.array([None if i % 5 == 0 else v for i, v in enumerate(floats)], dtype="Float64"),
            "x32": np.array([0.1 * i for i in range(n)], dtype=np.float32),
            "n": ints,
            "n_float": [float("nan") if v is None else float(v) for v in gap_ints],
            "n_obj": pd.Series([float("nan") if v is None else float(v) for v in gap_ints], dtype=object),
            "n_ea": pd.array(gap_ints, dtype="Int64"),
            "flag": [i % 2 == 0 for i in range(n)],
            "flag_gap": pd.Series([None if i == 2 else i % 2 == 0 for i in range(n)], dtype=object),
            "verdict": pd.array([None if i % 3 == 0 else i % 2 == 0 for i in range(n)], dtype="boolean"),
            "verdict_obj": pd.Series([None if i % 3 == 0 else i % 2 == 0 for i in range(n)], dtype=object),
        }
    ).iloc[::-1]  # a frame's index need not be 0..n-1


def neutralised(df: pd.DataFrame) -> pd.DataFrame:
    """The reference neutralising: every text column's cells through ``neutralise``."""
    out = df.copy()
    for col, dtype in zip(df.columns, df.dtypes):
        if dtype == object or isinstance(dtype, pd.StringDtype):  # noqa: E721 - numpy dtype equality
            out[col] = df[col].map(neutralise)
    return out


def pandas_csv(df: pd.DataFrame, table: Table) -> str:
    """The reference: what pandas' ``to_csv`` writes for the conformed, neutralised frame (what
    ``write_table`` wrote before it was made of ``render_rows``)."""
    return neutralised(conform(df, table)).to_csv(index=False, lineterminator="\n")


def test_render_rows_and_write_table_write_what_to_csv_writes_for_hostile_cells(tmp_path):
    df = hostile_frame()
    write_table(df, tmp_path / "hostile.csv", HOSTILE)
    written = (tmp_path / "hostile.csv").read_bytes().decode("utf-8")  # no newline translation
    rows = render_rows(df, HOSTILE)
    assert written == pandas_csv(df, HOSTILE) == ",".join(HOSTILE.names) + "\n" + rows.text
    write_table(df.iloc[:0], tmp_path / "empty.csv", HOSTILE)
    assert (tmp_path / "empty.csv").read_text() == pandas_csv(df.iloc[:0], HOSTILE)
    # and each table alone, one column at a time, in any column order
    for col in HOSTILE.columns:
        one = Table("one", (col,))
        write_table(df.iloc[:, ::-1], tmp_path / "one.csv", one)
        assert (tmp_path / "one.csv").read_bytes().decode("utf-8") == pandas_csv(df.iloc[:, ::-1], one)
        assert pandas_csv(df, one) == col.name + "\n" + render_rows(df, one).text
    for cell in ('"a,b"', '"say ""hi"""', '"two\nlines"', "'=1+1", "'-x", ",-2,", "1e-05",
                 "1e+16", "5e-324", "-0.0", "inf", "-inf", "0.30000000000000004", "1099511627776"):  # fmt: skip
        assert cell in rows.text, cell


def test_render_rows_refuses_what_a_kind_cannot_hold_whatever_the_dtype():
    for values in (pd.Series([2.0, 2.5], dtype=object), pd.Series([2.0, 2.5])):
        with pytest.raises((TypeError, ValueError)):
            render_rows(pd.DataFrame({"n": values}), SMALL)


def test_conform_refuses_what_a_kind_cannot_hold():
    import pandas as pd

    with pytest.raises((TypeError, ValueError)):
        conform(pd.DataFrame({"n": [2.5]}), SMALL)
    out = conform(pd.DataFrame({"plate": ["a"], "extra": [1]}), SMALL)
    assert list(out.columns) == ["plate", "n", "x", "ok"] and out["n"].isna().all()


def test_write_rows_refuses_rows_of_another_table(tmp_path):
    import pandas as pd

    rows = render_rows(pd.DataFrame({"plate": ["p"], "n": [1]}), SMALL)
    with pytest.raises(ValueError, match="cannot be written"):
        write_rows(tmp_path / "wells.csv", Table("wells", SMALL.columns), [rows])
    write_rows(tmp_path / "small.csv", SMALL, [rows, rows])
    assert (tmp_path / "small.csv").read_text() == "plate,n,x,ok\np,1,,\np,1,,\n"


def test_write_rows_writes_every_byte_in_order_through_short_writes_and_views(tmp_path, monkeypatch):
    """write_rows hands the rows to os.writev in groups; a short write (a signal, a pipe, NFS) resumes
    where it stopped, inside a buffer too; rows that are views into a batch file are written as bytes."""
    import os

    from cr51 import tables

    body = memoryview("".join(f"p{i},{i},é{i},\n" for i in range(1200)).encode())
    parts, pos = [], 0
    for i in range(1200):
        n = len(f"p{i},{i},é{i},\n".encode())
        parts.append(Rows("small", body[pos : pos + n]))
        pos += n
    real = os.writev
    calls = []

    def short(fd, buffers):
        calls.append(len(buffers))
        joined = b"".join(bytes(b) for b in buffers)[:7]  # at most 7 bytes a call
        return real(fd, [joined])

    monkeypatch.setattr(tables.os, "writev", short)
    write_rows(tmp_path / "small.csv", SMALL, parts)
    assert (tmp_path / "small.csv").read_bytes() == b"plate,n,x,ok\n" + bytes(body)
    assert max(calls) <= tables.WRITEV_PARTS


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_result_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Colleagues read the tables: a result file's mode follows the umask, as an ordinary file's does."""
    import subprocess
    import sys

    code = (
        "import os, sys, pandas as pd; os.umask(int(sys.argv[2]));"
        "from cr51.schema import FILES; from cr51.tables import write_table;"
        "write_table(pd.DataFrame({'file': ['a']}), sys.argv[1], FILES)"
    )
    path = tmp_path / "files.csv"
    subprocess.run([sys.executable, "-c", code, str(path), str(umask)], check=True)
    assert path.stat().st_mode & 0o777 == mode


def test_this_run_compares_with_the_previous_run(tmp_path):
    """The index's 'This run': files new, replaced, changed in status or removed since the previous run,
    and the plates accepted in this run (results/.run-state.json keeps what the previous collect saw)."""
    from cr51.collect import run_changes

    def files(rows):
        return pd.DataFrame(rows, columns=["file", "sha256", "bytes", "status", "plate", "reason"])

    a = ["a.csv", "1" * 64, 5, "ok", "A", ""]
    b = ["b.csv", "2" * 64, 5, "pending", "", "no layout"]
    first = run_changes(tmp_path, files([a, b]), {"A": 1})
    assert not first.previous and [r["change"] for r in first.files] == ["new", "new"] and first.plates == {"A": 1}
    again = run_changes(tmp_path, files([a, b]), {"A": 1})
    assert again.previous and again.files == [] and again.plates == {}
    a2 = ["a.csv", "3" * 64, 6, "ok", "A", ""]
    b2 = ["b.csv", "2" * 64, 5, "ok", "B", ""]
    c = ["c.toml", "4" * 64, 7, "rejected", "C", "bad"]
    third = run_changes(tmp_path, files([a2, b2, c]), {"A": 2, "B": 1})
    changes = {r["file"]: r["change"] for r in third.files}
    assert changes == {"a.csv": "replaced", "b.csv": "status (was pending)", "c.toml": "new"}
    assert third.plates == {"A": 2, "B": 1}
    fourth = run_changes(tmp_path, files([a2, b2]), {"A": 2, "B": 1})
    assert [(r["file"], r["change"]) for r in fourth.files] == [("c.toml", "removed")] and fourth.plates == {}
    (tmp_path / ".run-state.json").write_text("{damaged")
    assert not run_changes(tmp_path, files([a2]), {"A": 2}).previous


def test_analyse_batch_of_several_plates_is_each_plate_analysed_alone(tmp_path):
    from cr51.plate import _by_plate

    raw = tmp_path / "raw"
    raw.mkdir()
    plates = [add(raw, "p1", 1), add(raw, "p0", 2)]
    one = {p.name: ingest_batch([p], SETTINGS) for p in plates}
    both = ingest_batch(plates, SETTINGS)
    pairs = list(_by_plate(both["wells"]))
    assert [name for name, _ in pairs] == ["p0", "p1"]  # groupby's order, each plate's rows as they were
    for name, wells in pairs:
        pd.testing.assert_frame_equal(wells.reset_index(drop=True), one[name]["wells"])
    [(name, wells)] = _by_plate(one["p1"]["wells"])
    assert name == "p1" and wells is one["p1"]["wells"]  # one plate: the frame itself, not a copy
    together = analyse_batch(both["wells"], both["qc"], SETTINGS)
    alone = [analyse_batch(one[n]["wells"], one[n]["qc"], SETTINGS) for n in ("p0", "p1")]
    for table in ("fits", "potency", "lots_differ"):
        expect = concat_frames([a[table] for a in alone], TABLES_BY_NAME[table].names)
        pd.testing.assert_frame_equal(together[table], expect, check_exact=True)


def test_records_are_each_columns_tolist_values():
    df = hostile_frame().assign(when=pd.Timestamp("2026-12-02"), cat=pd.Categorical(["x"] * len(NASTY_TEXT)))
    rows = records(df)
    columns = {c: df[c].tolist() for c in df.columns}
    assert len(rows) == len(df) and all(list(r) == list(df.columns) for r in rows)
    for i, row in enumerate(rows):
        for c, v in row.items():
            want = columns[c][i]
            assert type(v) is type(want) and (v is want or v == want or (v != v and want != want)), (c, v, want)
    assert records(df.iloc[:0]) == [] and records(df[[]]) == []
    numbers = records(df[["n", "x"]])  # ints stay ints beside floats
    assert [type(r["n"]) for r in numbers] == [int] * len(df) and numbers[0]["n"] == columns["n"][0]


def test_rows_are_joined_exactly_as_the_csv_writer_writes_them():
    """render_rows joins the cells itself (_csv_text); whatever the cells, the text is the csv
    writer's: quoting of commas, quotes and line ends (as this Python's csv decides: \\r is not
    quoted by 3.11's), floats as repr, numpy scalars, None, one-column tables."""
    import csv
    import io
    import random

    from cr51.tables import _csv_text

    class Text(str):
        pass

    pool = ["", "a", "a,b", 'say "hi"', "two\nlines", "cr\rhere", "nul\x00x", " lead", "é✓", "'=1", "\t", '"', ",",
            "\n", "\r", "\r\n", Text("x,y"), "\\", ";", 0.1, 1e-5, float("inf"), float("nan"), -0.0, 5e-324, 1 / 3, 3,
            -7, True, False, np.float64(0.1), np.int64(5), np.bool_(True), 2**70, None]  # fmt: skip
    numbers = [v for v in pool if type(v) in (float, int, bool)]  # a column of these is not looked at
    kinds = [pool, numbers, [v for v in pool if isinstance(v, str)], [v for v in pool if v not in numbers]]
    rng = random.Random(1)
    for _ in range(5000):
        ncol, nrow = rng.randint(1, 5), rng.randint(1, 6)
        cols = [[rng.choice(kind) for _ in range(nrow)] for kind in (rng.choice(kinds) for _ in range(ncol))]
        ref = io.StringIO()
        csv.writer(ref, lineterminator="\n").writerows(zip(*cols))
        assert _csv_text(cols) == ref.getvalue(), cols


def _plate_history_reference(results_dir, batches, potency, qc, now):
    """plate_history as it was written before it read the registry as JSON and the potency rows column by
    column (a frame of row dicts, the registry's objects): the reference the faster code must equal."""
    from cr51.archive import FORMAT, HISTORY, Archive, iso, read_json, write_json

    path = Path(results_dir) / "archive" / HISTORY
    data = read_json(path, "the plate history") or {"format": FORMAT, "plates": {}}
    hist = data["plates"]
    accepted = set(qc["plate"].astype(str))
    versions = {p: v for b in batches for p, v in b.versions.items() if p in accepted and v}
    cols = ["lot", "rp", "rp_lo", "rp_hi", "status"]
    rows_of = {}
    for r in records(potency[["plate", *cols]]):
        rows_of.setdefault(str(r["plate"]), []).append({c: (None if pd.isna(r[c]) else r[c]) for c in cols})
    stamp = iso(now)
    for plate, version in sorted(versions.items()):
        entries = hist.setdefault(plate, [])
        current = next((e for e in reversed(entries) if e["replaced_at"] is None), None)
        if current is not None and current["version"] == version:
            current["potency"] = rows_of.get(plate, [])
            continue
        if current is not None:
            current["replaced_at"] = stamp
        entries.append(
            {"version": version, "accepted_at": stamp, "replaced_at": None, "potency": rows_of.get(plate, [])}
        )
    if hist or path.exists():
        write_json(path, data)
    archive = Archive(results_dir)
    out = []
    for plate, entries in sorted(hist.items()):
        record = archive.plates.get(plate)
        known = {v.version: v for v in record.versions} if record else {}
        for e in entries:
            v = known.get(e["version"])
            base = {
                "plate": plate,
                "version": e["version"],
                "layout_sha256": v.layout.sha256 if v else "",
                "export_sha256": v.export.sha256 if v else "",
                "templates_sha256": " ".join(t.sha256 for t in v.templates) if v else "",
                "admitted_at": v.admitted_at if v else "",
                "accepted_at": e["accepted_at"],
                "replaced_at": e["replaced_at"] or "",
                "current": e["replaced_at"] is None and plate in accepted,
            }
            out += [{**base, **r} for r in e["potency"]] or [base]
    return pd.DataFrame(out, columns=list(TABLES_BY_NAME["plate_history"].names))


def test_plate_history_equals_the_reference_over_a_re_export(tmp_path):
    """The table and archive/history.json are what the reference gives: a superseded version keeps its
    numbers, a plate without potency rows gets one row, missing numbers stay missing, a version the
    registry lacks has no archive facts, a plate no longer accepted is not current."""
    import json
    from types import SimpleNamespace

    from cr51.archive import Stored, Version
    from cr51.collect import plate_history

    def version(n, name, templates=()):
        stored = [Stored(f"{name}.{x}", f"{x}{n}" * 32) for x in ("ab", "cd")]
        return Version(
            n, *stored, tuple(Stored(t, "e" * 64) for t in templates), f"2026-01-0{n}T00:00:00+00:00"
        ).to_dict()

    registry = {"format": 1, "plates": {
        "A": {"versions": [version(1, "A"), version(2, "A", ["t.toml"])], "missing_since": None, "cleanout_confirmed": False},
        "B": {"versions": [version(1, "B")], "missing_since": None, "cleanout_confirmed": False},
    }}  # fmt: skip
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    for d in (ours, ref):
        (d / "archive").mkdir(parents=True)
        (d / "archive" / "registry.json").write_text(json.dumps(registry))

    def potency(rows):
        return pd.DataFrame(rows, columns=["plate", "lot", "rp", "rp_lo", "rp_hi", "status", "df"])

    qc = pd.DataFrame({"plate": ["A", "B", "C"]})
    runs = [
        ({"A": 1, "B": 1, "C": 3}, potency([["A", "L1", 1.5, 1.0, 2.0, "ok", 3], ["A", "L2", np.nan, np.nan, np.nan, "failed", 3]])),
        ({"A": 2, "B": 1, "C": 3}, potency([["A", "L1", 1.25, 0.5, 3.0, "ok", 3], ["B", np.nan, 0.9, 0.8, 1.1, "ok", 3]])),
        ({"A": 2}, potency([["A", "L1", 1.25, 0.5, 3.0, "ok", 3]])),
    ]  # fmt: skip
    for i, (versions, pot) in enumerate(runs):
        batches = [SimpleNamespace(versions=versions)]
        now = 1.8e9 + 3600 * i
        got = plate_history(ours, batches, pot, qc if i < 2 else qc.iloc[:1], now)
        want = _plate_history_reference(ref, batches, pot, qc if i < 2 else qc.iloc[:1], now)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert [type(v) for v in got.to_numpy(dtype=object).ravel()] == [
            type(v) for v in want.to_numpy(dtype=object).ravel()
        ]
        assert (ours / "archive" / "history.json").read_bytes() == (ref / "archive" / "history.json").read_bytes()
    assert set(got["plate"]) == {"A", "B", "C"} and len(got[got["plate"] == "A"]) == 3
