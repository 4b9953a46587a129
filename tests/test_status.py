"""The one status vocabulary: every word in the table, failures named by it, old reports' words read."""

import json

import pytest

from nfdeploy.status import FAILURES, STATUS_TABLE, Status, failure_summary


def test_every_status_has_its_row_and_json_keeps_the_word():
    assert set(STATUS_TABLE) == set(Status)
    assert json.dumps({"status": Status.FAIL}) == '{"status": "FAIL"}'
    assert [s.value for s in FAILURES] == ["FAIL", "broken", "crashed", "timeout"]
    assert not any(s.is_failure for s in (Status.PASS, Status.SKIPPED, Status.UNCHECKED, Status.DONE))


def test_parse_reads_every_word_and_the_old_ones():
    for s in Status:
        assert Status.parse(s.value) is s and Status.parse(s) is s
    assert Status.parse("failed") is Status.CRASHED  # what bench rows and GPU-suite steps said before the table
    with pytest.raises(ValueError, match="not a status word: 'fine'"):
        Status.parse("fine")


def test_failure_summary_groups_names_by_kind_in_table_order():
    named = [("a", Status.BROKEN), ("b", Status.FAIL), ("c", Status.PASS), ("d", Status.FAIL), ("e", Status.SKIPPED)]
    assert failure_summary(named) == "outside tolerance: b, d; failed to load: a"
    assert failure_summary([("c", Status.PASS)]) == ""
