"""The one JSON Lines reader/writer (issue 10, item 6): a cut-short last line is dropped
with a warning naming the file; any other bad line is an error."""

from __future__ import annotations

import json

import pytest

from sweeper.jsonl import JsonlError, TruncatedLineWarning, append_row, read_jsonl, write_jsonl
from sweeper.report.load import ReportError, read_metrics_jsonl

ROWS = [{"round": 1, "main_acc": 0.5}, {"round": 2, "main_acc": 0.75, "backdoor_acc_heldout": None,
                                        "num_attackers": 3}]


def test_round_trip_and_missing_file(tmp_path):
    p = tmp_path / "m.jsonl"
    assert read_jsonl(p) == []
    write_jsonl(p, ROWS[:1])
    with open(p, "ab", buffering=0) as f:
        append_row(f, ROWS[1])
    assert read_jsonl(p) == ROWS
    assert p.read_text(encoding="utf-8").splitlines()[0].startswith('{"round": 1')  # round first


def test_other_row_shapes_with_their_own_schema(tmp_path):
    """Metrics rows are the default schema; a caller can read other rows with its own."""
    from typing import Any

    p = tmp_path / "notes.jsonl"
    rows = [{"round": 1, "note": "é"}]
    write_jsonl(p, rows)
    assert read_jsonl(p, dict[str, Any]) == rows
    with pytest.raises(JsonlError, match=r"line 1: `note`: Input should be a valid number"):
        read_jsonl(p)


@pytest.mark.parametrize("tail", [b'{"round": 3, "main_a', b"\xff\xfe\x00", b'{"round": 3,\n'])
def test_cut_short_last_line_is_dropped_with_a_warning_naming_the_file(tmp_path, tail):
    p = tmp_path / "m.jsonl"
    write_jsonl(p, ROWS)
    with open(p, "ab") as f:
        f.write(tail)
    with pytest.warns(TruncatedLineWarning, match=str(p)):
        assert read_jsonl(p) == ROWS


@pytest.mark.parametrize("bad", ['{"round": 2, "main_a', "[1, 2]"])
def test_bad_line_before_the_last_is_an_error(tmp_path, bad):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + bad + "\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(JsonlError, match=r"line 2(:| is not a JSON object)") as e:
        read_jsonl(p)
    assert str(p) in str(e.value)
    with pytest.raises(ReportError, match="line 2"):  # the report keeps its own error type
        read_metrics_jsonl(p)
