"""Counter exports: the nuclide the CPM column is for (config ``counter.nuclide``), and the counter's
per-tube ``Info`` flags and ``Error %`` carried into wells.csv and flagged (``COUNTER_INFO``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cr51.ingest import InputError, read_export
from cr51.plate import BatchTables, PlateInput, ingest_plate
from cr51.schema import FLAGS, WELLS
from cr51.settings import Analysis
from cr51.simulate import simulate_plate, write_plate

HEADER = (
    "Protocol ID,Protocol name,Measurement date & time,Completion status,Run ID,Rack,Det,Pos,Time,"
    "Sample code,I-125 Counts,I-125 CPM,I-125 Error %,I-125 Info"
)
RACKS, POSITIONS = 43, 10


def num(x: float) -> str:
    """A number as the Wizard2 writes it: at most 2 decimals, no trailing zeros (``1200.05``, ``60``)."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def i125_export(path: Path) -> dict[tuple[int, int], tuple[float, float, str]]:
    """Write an export of the shape a Wizard2 gives for an I-125 protocol: CRLF line ends, the header
    on one line, 43 racks x 10 positions, an empty Sample code, ``I`` in Info on near-empty tubes
    (CPM 0.8-6.4, Error % 39-115). Returns {(rack, pos): (cpm, error %, info)}."""
    rng = np.random.default_rng(125)
    empty_cpm = iter([0.8, 6.4, *np.round(rng.uniform(0.8, 6.4, 200), 2)])
    empty_err = iter([115.0, 39.0, *np.round(rng.uniform(39, 115, 200), 2)])
    lines, tubes = [HEADER], {}
    for rack in range(1, RACKS + 1):
        for pos in range(1, POSITIONS + 1):
            seconds = 60.0
            if (rack + pos) % 4 == 0:  # a near-empty tube
                cpm, err, info = float(next(empty_cpm)), float(next(empty_err)), "I"
            else:
                cpm = float(np.round(rng.uniform(900, 45000), 2))
                cpm_err = float(np.round(100 / np.sqrt(cpm), 2))
                err, info = cpm_err, ""
            counts = round(cpm * seconds / 60 + 30.5, 2)
            stamp = f"2019-03-14 {9 + (rack * 10 + pos) // 60 % 10:02d}:{(rack * 10 + pos) % 60:02d}:07"
            lines.append(
                f"12,I-125 RIA,{stamp},0,5120,{rack},{1 + (pos - 1) % 5},{pos},{num(seconds)},,{num(counts)},"
                f"{num(cpm)},{num(err)},{info}"
            )
            tubes[(rack, pos)] = (cpm, err, info)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return tubes


def test_an_export_counted_for_another_nuclide_is_refused_and_read_when_configured(tmp_path):
    path = tmp_path / "i125.csv"
    tubes = i125_export(path)
    assert path.read_bytes().count(b"\r\n") == RACKS * POSITIONS + 1
    with pytest.raises(InputError) as err:
        read_export(path)
    msg = str(err.value)
    assert "line 1" in msg and "I-125" in msg and "not for Cr-51" in msg and "counter.nuclide" in msg

    for spelling in ("I-125", "125I", "i125"):
        exp = read_export(path, nuclide=spelling)
        assert exp.format == "wizard2" and len(exp.counts) == RACKS * POSITIONS
        got = {
            (int(r), int(p)): (c, e, i)
            for r, p, c, e, i in zip(
                exp.counts["rack"], exp.counts["pos"], exp.counts["cpm"],
                exp.counter["counter_error_pct"], exp.counter["counter_info"],
            )
        }  # fmt: skip
        assert got == tubes
    flagged = [t for t in tubes.values() if t[2] == "I"]
    assert len(flagged) > 50 and all(0.8 <= c <= 6.4 and 39 <= e <= 115 for c, e, _ in flagged)


def test_a_cr51_export_is_refused_when_another_nuclide_is_configured():
    exports = Path(__file__).parent / "data" / "exports" / "wizard2"
    with pytest.raises(InputError, match="counts are for Cr-51 .* not for I-125"):
        read_export(exports / "004391.csv", nuclide="I-125")
    exp = read_export(exports / "004391.csv")  # the real export's own flags are kept
    assert exp.counter["counter_info"].iloc[:3].tolist() == ["I", "", "I"]
    assert exp.counter["counter_error_pct"].iloc[:3].tolist() == [0.0, 1.0, 62.37]


def test_counter_nuclide_is_a_setting():
    assert Analysis.from_config({}).counter.nuclide == "Cr-51"
    assert Analysis.from_config({"counter": {"nuclide": "I-125"}}).counter.nuclide == "I-125"


# ------------------------------------------------------------------ through a plate: wells.csv and QC


@pytest.fixture()
def wizard2_plate(tmp_path):
    plate = simulate_plate("w2", np.random.default_rng(7), lots={"REF-001": 1.0, "LOT-A": 2.0}, fmt="wizard2")
    files = write_plate(tmp_path, plate, "wizard2")
    layout = next(p for p in files if p.suffix == ".toml")
    export = next(p for p in files if p.suffix == ".csv")
    return PlateInput("w2", str(layout), str(export))


def ingest(plate: PlateInput, **config) -> BatchTables:
    out = BatchTables()
    ingest_plate(plate, Analysis.from_config(config), out)
    return out


def flag_tube(export: Path, line_no: int, info: str) -> None:
    """Set the Info cell of one data line (1 = first tube) of a simulated Wizard2 export."""
    lines = export.read_text().splitlines(keepends=True)
    cells = lines[line_no].rstrip("\r\n").split(",")
    cells[-1] = info
    lines[line_no] = ",".join(cells) + "\n"
    export.write_text("".join(lines))


def test_info_and_error_pct_reach_wells_and_a_flagged_used_well_flags_the_plate(wizard2_plate):
    export = Path(wizard2_plate.export)
    rows = [ln.split(",") for ln in export.read_text().splitlines()]
    # make every tube unflagged, then flag the first tube (the layout's first well, a used well)
    for k in range(1, len(rows)):
        flag_tube(export, k, "")
    clean = ingest(wizard2_plate)
    wells = clean.frames()["wells"]
    assert tuple(wells.columns) == WELLS.names and WELLS.names[-2:] == ("counter_info", "counter_error_pct")
    assert (wells["counter_info"] == "").all() and wells["counter_error_pct"].notna().all()
    assert "COUNTER_INFO" not in clean.qc[0]["flags"]

    flag_tube(export, 1, "I")
    flagged = ingest(wizard2_plate)
    wells = flagged.frames()["wells"]
    first = rows[1]
    tube = wells[(wells["rack"] == float(first[5])) & (wells["pos"] == float(first[7]))]
    assert tube["counter_info"].tolist() == ["I"] and tube["counter_error_pct"].tolist() == [float(first[12])]
    assert (wells["counter_info"] == "I").sum() == 1
    assert "COUNTER_INFO" in flagged.qc[0]["flags"].split(";") and "COUNTER_INFO" in FLAGS
    assert flagged.qc[0]["status"] == clean.qc[0]["status"]  # flagged, not failed


def test_a_plate_counted_for_another_nuclide_is_rejected_with_the_reason(wizard2_plate):
    export = Path(wizard2_plate.export)
    export.write_text(export.read_text().replace("Cr-51 ", "I-125 "))
    refused = ingest(wizard2_plate)
    assert [r["status"] for r in refused.files] == ["rejected", "rejected"] and not refused.wells
    assert "I-125" in refused.files[1]["reason"] and "not for Cr-51" in refused.files[1]["reason"]
    read = ingest(wizard2_plate, counter={"nuclide": "I-125"})
    assert [r["status"] for r in read.files] == ["ok", "ok"] and len(read.frames()["wells"]) > 0


def test_well_exports_have_empty_counter_columns(tmp_path):
    plate = simulate_plate("wl", np.random.default_rng(3), lots={"REF-001": 1.0, "LOT-A": 2.0}, fmt="well_list")
    files = write_plate(tmp_path, plate, "well_list")
    layout = next(p for p in files if p.suffix == ".toml")
    export = next(p for p in files if p.suffix == ".csv")
    wells = ingest(PlateInput("wl", str(layout), str(export))).frames()["wells"]
    assert (wells["counter_info"] == "").all() and wells["counter_error_pct"].isna().all()


def test_only_used_wells_flag_the_plate():
    import pandas as pd

    from cr51.qc import counter_flagged

    wells = pd.DataFrame(
        {
            "role": ["spontaneous", "background", "sample", "", "maximum"],
            "excluded": [False, False, True, True, False],
            "cpm": [300.0, 2.1, 1.5, 4.0, np.nan],
            "counter_info": ["I", "I", "I", "I", "I"],
        }
    )
    # used: counted, not excluded, a role whose counts enter lysis (background tubes are near-empty by design)
    assert counter_flagged(wells).tolist() == [True, False, False, False, False]
    assert not counter_flagged(wells.assign(counter_info="")).any()
    assert not counter_flagged(wells.drop(columns="counter_info")).any()
