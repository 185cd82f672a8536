"""The audit log: append-only records, input changes between runs, torn lines skipped; the checksummed
chain: every kind of damage detected, recorded once, a new chain started, no file reported new again."""

from __future__ import annotations

import json
import time

import pytest

from cr51 import audit


def rows(**files: tuple[str, str, str]) -> list[dict[str, str]]:
    """files.csv rows: name -> (plate, sha256, status)."""
    return [{"file": f, "plate": p, "sha256": s, "status": st} for f, (p, s, st) in files.items()]


def test_changes_between_runs():
    before = {"a.csv": {"plate": "a", "sha256": "1"}, "gone.csv": {"plate": "g", "sha256": "9"}}
    now = rows(**{"a.csv": ("a", "2", "ok"), "b.csv": ("b", "3", "rejected"), "w.csv": ("", "4", "pending")})
    changes = audit.input_changes(before, now)
    assert changes["replaced"] == [{"file": "a.csv", "plate": "a", "sha256": "2", "superseded_sha256": "1"}]
    assert changes["new"] == [{"file": "b.csv", "plate": "b", "sha256": "3"}]  # pending files are not decided
    assert changes["removed"] == [{"file": "gone.csv", "plate": "g", "superseded_sha256": "9"}]


def test_records_fold_into_the_decided_files(tmp_path):
    first = audit.input_changes({}, rows(**{"a.csv": ("a", "1", "ok"), "b.csv": ("b", "2", "ok")}))
    audit.append_record(tmp_path, first)
    with open(tmp_path / audit.AUDIT_NAME, "a") as fh:
        fh.write('{"new": [{"file": "torn')  # a record cut short by a crash: no newline, not JSON
    state = audit.decided_files(audit.read_records(tmp_path))
    second = audit.input_changes(state, rows(**{"a.csv": ("a", "5", "ok")}))
    audit.append_record(tmp_path, second)
    records = audit.read_records(tmp_path)
    runs = [r for r in records if "event" not in r]
    assert len(runs) == 2 and runs[-1]["replaced"][0]["superseded_sha256"] == "1"
    assert audit.decided_files(records) == {"a.csv": {"plate": "a", "sha256": "5"}}
    # the torn line is reported once, by the record that starts a new chain
    assert [r["problems"] for r in records if r.get("event") == audit.CHAIN_BROKEN] == [
        ["line 2 is not a complete record (a half or damaged line)"]
    ]


def test_append_only_one_line_per_record(tmp_path):
    for i in range(3):
        audit.append_record(tmp_path, {"i": i, "text": "é\nnewline inside"})
    lines = (tmp_path / audit.AUDIT_NAME).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]


def files_csv(results, **files: tuple[str, str, str]) -> None:
    """A files.csv: name -> (plate, sha256, status)."""
    lines = ["file,sha256,bytes,status,plate,reason"] + [f"{f},{s},1,{st},{p}," for f, (p, s, st) in files.items()]
    (results / "files.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def record(results, start: float | None = None) -> audit.Record:
    start = time.time() - 1 if start is None else start
    return audit.build_record(results, status="ok", start=start, config_hash="h", invoked_by="test")


def three_runs(results) -> list[audit.Record]:
    """Three recorded runs: two plates, then a third; a record each, through the chain."""
    files_csv(results, **{"a.toml": ("a", "1", "ok"), "a.csv": ("a", "2", "ok"), "b.csv": ("b", "3", "rejected")})
    audit.append_record(results, record(results))
    audit.append_record(results, record(results))
    files_csv(results, **{"a.toml": ("a", "1", "ok"), "a.csv": ("a", "2", "ok"), "b.csv": ("b", "3", "rejected"),
                          "c.toml": ("c", "4", "ok"), "c.csv": ("c", "5", "ok")})  # fmt: skip
    audit.append_record(results, record(results))
    return audit.read_records(results)


def log_lines(results) -> list[bytes]:
    return (results / audit.AUDIT_NAME).read_bytes().splitlines(keepends=True)


def test_every_record_carries_its_checksum_and_the_previous_one(tmp_path):
    records = three_runs(tmp_path)
    assert [r["prev_sha256"] for r in records] == [None, records[0]["sha256"], records[1]["sha256"]]
    assert all(r["sha256"] == audit.record_sha(r) for r in records)
    assert records[0]["seal"] == {"bytes": 0, "sha256": audit.hashlib.sha256(b"").hexdigest()}
    assert [len(r["new"]) for r in records] == [3, 0, 2]
    chain = audit.check_chain(tmp_path)
    assert chain.problems == [] and chain.head == records[-1]["sha256"]
    head = audit.read_head(tmp_path)
    assert head["sha256"] == records[-1]["sha256"] and head["bytes"] == (tmp_path / audit.AUDIT_NAME).stat().st_size
    assert set(head["decided"]) == {"a.toml", "a.csv", "b.csv", "c.toml", "c.csv"}


def _missing(results):
    (results / audit.AUDIT_NAME).unlink()


def _truncated(results):  # the last record gone, at a line boundary
    (results / audit.AUDIT_NAME).write_bytes(b"".join(log_lines(results)[:-1]))


def _cut(results):  # cut in the middle of the last record
    data = (results / audit.AUDIT_NAME).read_bytes()
    (results / audit.AUDIT_NAME).write_bytes(data[: len(data) - 40])


def _half_record_inside(results):  # a half line between complete records
    lines = log_lines(results)
    (results / audit.AUDIT_NAME).write_bytes(lines[0] + lines[1][:30] + b"\n" + lines[2])


def _edited(results):  # a record's content changed, checksum left as it was
    lines = log_lines(results)
    lines[1] = lines[1].replace(b'"status": "ok"', b'"status": "failed"')
    (results / audit.AUDIT_NAME).write_bytes(b"".join(lines))


def _edited_with_checksum(results):  # changed and its own checksum recomputed: the next record no longer follows
    lines = log_lines(results)
    rec = json.loads(lines[1])
    rec["note"] = "nothing happened"
    rec["sha256"] = audit.record_sha(rec)
    lines[1] = (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode()
    (results / audit.AUDIT_NAME).write_bytes(b"".join(lines))


def _middle_removed(results):
    lines = log_lines(results)
    (results / audit.AUDIT_NAME).write_bytes(lines[0] + lines[2])


DAMAGE = {
    "missing": (_missing, "is missing"),
    "truncated": (_truncated, "cut or truncated"),
    "cut": (_cut, "not a complete record"),
    "half record inside": (_half_record_inside, "line 2 is not a complete record"),
    "edited": (_edited, "line 2 was changed"),
    "edited, checksum recomputed": (_edited_with_checksum, "line 3 does not follow"),
    "record removed": (_middle_removed, "line 2 does not follow"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_detected_recorded_once_and_no_file_is_new_again(tmp_path, damage):
    three_runs(tmp_path)
    breaks, words = DAMAGE[damage]
    breaks(tmp_path)
    problems = audit.check_chain(tmp_path).problems
    assert problems and any(words in p for p in problems), problems
    rec = record(tmp_path)
    assert rec["new"] == [] and rec["removed"] == []  # from the chain's head, not from the damaged log
    assert audit.append_record(tmp_path, rec) == problems
    broken, run = audit.read_records(tmp_path)[-2:]
    assert broken["event"] == audit.CHAIN_BROKEN and broken["problems"] == problems
    assert (
        broken["prev_sha256"] is None and broken["run_id"] == rec["run_id"] and run["prev_sha256"] == broken["sha256"]
    )
    assert audit.check_chain(tmp_path).problems == []  # a new chain: the damage is sealed, reported once
    assert audit.append_record(tmp_path, record(tmp_path)) == []
    assert audit.check_chain(tmp_path).problems == []


def test_damage_to_the_sealed_bytes_is_found(tmp_path):
    three_runs(tmp_path)
    _truncated(tmp_path)
    audit.append_record(tmp_path, record(tmp_path))
    _edited(tmp_path)  # a record before the new chain's start
    problems = audit.check_chain(tmp_path).problems
    assert problems[-1] == "the log before line 3 was changed after the chain was started there", problems


def test_without_log_and_head_the_archive_says_which_files_were_decided(tmp_path):
    three_runs(tmp_path)
    (tmp_path / audit.AUDIT_NAME).unlink()
    (tmp_path / audit.HEAD_NAME).unlink()
    assert audit.check_chain(tmp_path).problems == []  # nothing says there were runs
    archive = tmp_path / "archive"
    archive.mkdir()
    version = {"version": 1, "templates": [], "admitted_at": audit._iso(time.time() - 3600)}
    plates = {p: {"versions": [{**version, "layout": {"name": f"{p}.toml", "sha256": x},
                                "export": {"name": f"{p}.csv", "sha256": y}}]}
              for p, x, y in (("a", "1", "2"), ("c", "4", "5"))}  # fmt: skip
    (archive / "registry.json").write_text(json.dumps({"format": 1, "plates": plates}))
    assert audit.check_chain(tmp_path).problems == [
        "the audit log audit.jsonl is missing, though the archive holds 2 plates"
    ]
    rec = record(tmp_path)
    assert [e["file"] for e in rec["new"]] == ["b.csv"]  # a rejected file is not in the archive: reported again


def test_a_log_from_before_the_chain_is_sealed_without_a_break(tmp_path):
    with open(tmp_path / audit.AUDIT_NAME, "w") as fh:
        fh.write(json.dumps({"run_id": "old", "new": [{"file": "a.csv", "plate": "a", "sha256": "1"}]}) + "\n")
    files_csv(tmp_path, **{"a.csv": ("a", "1", "ok")})
    rec = record(tmp_path)
    assert rec["new"] == []
    assert audit.append_record(tmp_path, rec) == []
    old, new = audit.read_records(tmp_path)
    assert "sha256" not in old and new["prev_sha256"] is None and new["seal"]["bytes"] > 0
    assert audit.check_chain(tmp_path).problems == []


def test_a_first_run_is_no_damage_though_it_admitted_plates_before_its_record(tmp_path):
    start = time.time() - 5
    archive = tmp_path / "archive"
    archive.mkdir()
    version = {"version": 1, "templates": [], "admitted_at": audit._iso(start + 2),  # admitted by this run
               "layout": {"name": "a.toml", "sha256": "1"}, "export": {"name": "a.csv", "sha256": "2"}}  # fmt: skip
    (archive / "registry.json").write_text(json.dumps({"format": 1, "plates": {"a": {"versions": [version]}}}))
    files_csv(tmp_path, **{"a.toml": ("a", "1", "ok"), "a.csv": ("a", "2", "ok")})
    rec = record(tmp_path, start)
    assert audit.append_record(tmp_path, rec) == []
    assert [len(r["new"]) for r in audit.read_records(tmp_path)] == [2]
    assert audit.repair_chain(tmp_path, start) == []
