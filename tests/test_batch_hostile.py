"""A hostile drop folder through the whole pipeline (cr51-batch): bad exports, bad layouts, odd names.

Every file gets a status and a reason in files.csv, the good plates go on, the drop folder is
never modified, and no part of a file name ever reaches a shell.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from batchkit import LOTS, add_plate, pipeline_copy, rename_plate, run_batch, snapshot

from cr51.simulate import simulate_plate
from cr51.tables import read_table

pytestmark = pytest.mark.slow

MAX_EXPORT_BYTES = 100_000
SPARSE_BYTES = 20 * 10**9  # reading this whole would take far longer than the run's timeout
PWNED = ("PWNED", "PWNED2", "PWNED3")
SHELLY_NAMES = {
    "space": "has space",
    "quote": "quo'te",
    "dquote": 'dq"uote',
    "semicolon": "semi;colon",
    "subst": "$(touch PWNED)",
    "backtick": "`touch PWNED2`",
    "chain": ";touch PWNED3;",
    "dash": "-rf --no-preserve-root",
    "unicode": "élève µ 試験",
    "formula": '=HYPERLINK("evil")',
}
UNUSABLE_NAMES = {"brace": "brace{batch}", "newline": "new\nline"}


def well_list(cpm: dict[str, float], **override: str | None) -> str:
    """A well-list export of ``cpm``; ``override`` replaces a well's cell text (None drops the well)."""
    lines = ["Well,CPM"]
    for well, value in cpm.items():
        text = override.get(well, f"{value:.2f}")
        if text is not None:
            lines.append(f"{well},{text}")
    return "\n".join(lines) + "\n"


def bad_plate(raw: Path, name: str, *, export: str | bytes | None = None, layout_edit=None, **override) -> None:
    """A plate whose export (or layout) is broken as described."""
    plate = simulate_plate(name, np.random.default_rng(zlib.crc32(name.encode())), lots=LOTS, donor="D02")
    layout = plate.layout_toml if layout_edit is None else layout_edit(plate.layout_toml)
    (raw / f"{name}.toml").write_text(layout, encoding="utf-8")
    content = well_list(plate.cpm, **override) if export is None else export
    path = raw / f"{name}.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def drop(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


SPONT = '[block.4x1.G1]\nrole = "spontaneous"\n'
MAXI = '[block.4x1.G5]\nrole = "maximum"\n'


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    work = pipeline_copy(base / "pipeline")
    raw, results = base / "raw", base / "results"
    raw.mkdir()
    add_plate(raw, "good1", 1)
    add_plate(raw, "good2", 2, fmt="plate_grid")
    cpm = simulate_plate("x", np.random.default_rng(3), lots=LOTS).cpm
    text = well_list(cpm)
    bad_plate(raw, "empty", export=b"")
    bad_plate(raw, "truncated", export=text[: text.index("\nG5,") + 3])
    bad_plate(raw, "binary", export=bytes(range(256)) * 4)
    bad_plate(raw, "latin1", export=text.replace("Well", "Wéll").encode("latin-1"))
    bad_plate(raw, "nonnumeric", A3="abc")
    bad_plate(raw, "nan", A3="NaN")
    bad_plate(raw, "negative", A3="-5")
    bad_plate(raw, "spont_high", **{f"G{i}": "9000" for i in range(1, 5)})
    bad_plate(raw, "no_spont", layout_edit=drop(SPONT, ""))
    bad_plate(raw, "no_max", layout_edit=drop(MAXI, ""))
    bad_plate(raw, "spont_absent", **{f"G{i}": None for i in range(1, 5)})
    bad_plate(raw, "sample_absent", A5=None, B7=None)
    bad_plate(raw, "unknown_role", layout_edit=drop('role = "maximum"', 'role = "maximal"'))
    bad_plate(raw, "lot_formula", layout_edit=drop('lot = "LOT-A"', 'lot = "=cmd|calc"'))
    bad_plate(raw, "lot_plus", layout_edit=drop('lot = "LOT-A"', 'lot = "+SUM(A1)"'))
    bad_plate(raw, "ref_at", layout_edit=drop('reference_lot = "REF-001"', 'reference_lot = "@REF"'))
    bad_plate(raw, "donor_dash", layout_edit=drop('donor = "D02"', 'donor = "-D02"'))
    bad_plate(raw, "inc_abs", layout_edit=drop("[meta]\n", '[meta]\ninclude = "/etc/hostname"\n'))
    bad_plate(raw, "inc_up", layout_edit=drop("[meta]\n", '[meta]\ninclude = "../pipeline/Snakefile"\n'))
    bad_plate(raw, "huge")
    os.truncate(raw / "huge.csv", SPARSE_BYTES)
    for i, (key, name) in enumerate({**SHELLY_NAMES, **UNUSABLE_NAMES}.items()):
        add_plate(raw, key, 10 + i)
        rename_plate(raw, key, name)
    add_plate(raw, "latin1name", 30)
    rename_plate(raw, "latin1name", b"caf\xe9")
    before = snapshot(raw)
    proc = run_batch(work, raw, results, f"max_export_bytes={MAX_EXPORT_BYTES}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = read_table(results / "files.csv").set_index("file")
    return dict(base=base, work=work, raw=raw, results=results, proc=proc, before=before, files=files)


def status(files, name: str) -> tuple[str, str]:
    row = files.loc[name]
    return row["status"], str(row["reason"])


def test_drop_folder_is_never_modified(hostile):
    assert snapshot(hostile["raw"]) == hostile["before"]


def test_every_file_is_listed_and_good_plates_go_on(hostile):
    files, raw = hostile["files"], hostile["raw"]
    assert len(files) == len(os.listdir(raw))
    assert set(files["status"]) <= {"ok", "rejected", "pending", "duplicate"}
    assert files["reason"].notna().sum() > 0
    wells = read_table(hostile["results"] / "wells.csv")
    assert {"good1", "good2"} <= set(wells["plate"])
    assert hostile["proc"].stdout.count("\n") == 1 and "plates ok" in hostile["proc"].stdout


@pytest.mark.parametrize(
    "file, words",
    [
        ("empty.csv", "empty"),
        ("truncated.csv", "line"),
        ("binary.csv", "binary"),
        ("latin1.csv", "UTF-8"),
        ("nonnumeric.csv", "abc"),
        ("nan.csv", "NaN"),
        ("negative.csv", "negative"),
        ("spont_high.csv", "not above spontaneous"),
        ("no_spont.csv", "spontaneous"),
        ("no_max.csv", "maximum"),
        ("spont_absent.csv", "spontaneous"),
        ("unknown_role.toml", "unknown role"),
        ("lot_formula.toml", "not allowed"),
        ("lot_plus.toml", "not allowed"),
        ("ref_at.toml", "not allowed"),
        ("donor_dash.toml", "not allowed"),
        ("inc_abs.toml", "bare file name"),
        ("inc_up.toml", "bare file name"),
        ("huge.csv", "limit"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(hostile, file, words):
    state, reason = status(hostile["files"], file)
    assert state == "rejected" and words in reason, reason
    stem, suffix = file.rsplit(".", 1)
    other = stem + (".toml" if suffix == "csv" else ".csv")
    assert status(hostile["files"], other)[0] == "rejected"  # the plate's other file says so too


def test_missing_sample_wells_are_flagged_not_rejected(hostile):
    assert status(hostile["files"], "sample_absent.csv")[0] == "ok"
    qc = read_table(hostile["results"] / "qc.csv").set_index("plate")
    assert "MISSING_WELLS" in qc.loc["sample_absent", "flags"]


def test_oversized_export_is_never_read(hostile):
    row = hostile["files"].loc["huge.csv"]
    assert row["bytes"] == SPARSE_BYTES and not isinstance(row["sha256"], str)  # no sha: not read


def test_odd_names_are_processed_and_never_reach_a_shell(hostile):
    files = hostile["files"]
    for key, name in SHELLY_NAMES.items():
        shown = "'" + name if name[0] in "=-" else name
        assert status(files, f"{shown}.csv")[0] == "ok", (key, status(files, f"{shown}.csv"))
    places = [hostile["work"], hostile["raw"], hostile["results"], hostile["base"], Path.cwd()]
    for place in places:
        for marker in PWNED:
            assert not list(place.rglob(marker)), (place, marker)


def test_unusable_names_are_rejected_with_a_reason(hostile):
    files = hostile["files"]
    for name in UNUSABLE_NAMES.values():
        for suffix in (".toml", ".csv"):
            state, reason = status(files, name + suffix)
            assert state == "rejected" and "rename" in reason
    state, reason = status(files, "caf\\xe9.csv")
    assert state == "rejected" and "UTF-8" in reason


def test_formula_like_names_are_neutralised_in_files_csv(hostile):
    text = (hostile["results"] / "files.csv").read_text(encoding="utf-8")
    assert '"\'=HYPERLINK(""evil"").csv"' in text
    assert "\n'-rf --no-preserve-root.csv," in text
    assert "\n=" not in text and "\n-" not in text and "\n+" not in text and "\n@" not in text
