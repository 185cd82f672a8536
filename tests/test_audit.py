"""The audit log: append-only records, input changes between runs, torn lines skipped."""

from __future__ import annotations

import json

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
    assert len(records) == 2 and records[-1]["replaced"][0]["superseded_sha256"] == "1"
    assert audit.decided_files(records) == {"a.csv": {"plate": "a", "sha256": "5"}}


def test_append_only_one_line_per_record(tmp_path):
    for i in range(3):
        audit.append_record(tmp_path, {"i": i, "text": "é\nnewline inside"})
    lines = (tmp_path / audit.AUDIT_NAME).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]
