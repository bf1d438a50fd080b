"""Frame accounting: every frame received, duplicated, late, undecodable, dropped or missing."""

from stream.accounting import AccountingSummary, SeriesAccounting


def test_complete_series_in_order():
    accounting = SeriesAccounting(series_id=3, expected=5)
    assert all(accounting.record_frame(i) for i in range(5))
    summary = accounting.summary()
    assert summary.received == 5 and summary.lost == 0 and summary.missing == ()
    assert summary.line() == "frames: expected 5, received 5, lost 0"
    assert accounting.complete


def test_duplicates_gaps_out_of_order_undecodable_dropped():
    accounting = SeriesAccounting(series_id=1, expected=8)
    for index in (0, 1, 3, 2, 3):
        accounting.record_frame(index)
    accounting.record_undecodable(5, "truncated blob")
    accounting.record_undecodable(None, "bad JSON")
    accounting.record_frame(6)
    accounting.record_dropped(6)
    accounting.record_malformed("unknown htype 'x'")
    summary = accounting.summary(ended_by="timeout")
    assert summary.received == 4  # 0, 1, 2, 3
    assert summary.duplicates == 1
    assert summary.out_of_order == 1  # frame 2 after frame 3
    assert summary.undecodable == 2
    assert summary.dropped == 1
    assert summary.missing == (4, 7)
    assert summary.lost == 2 + 2 + 1
    assert summary.reasons == {"truncated blob": 1, "bad JSON": 1, "unknown htype 'x'": 1}
    line = summary.line()
    assert line.startswith("frames: expected 8, received 4, lost 5")
    assert "missing 2" in line and "dropped 1" in line and "series ended by timeout" in line
    assert AccountingSummary.from_dict(summary.as_dict()) == summary


def test_unknown_expected_count_uses_highest_index():
    accounting = SeriesAccounting(series_id=2, expected=None)
    for index in (0, 2, 5):
        accounting.record_frame(index)
    summary = accounting.summary()
    assert summary.expected is None
    assert summary.missing == (1, 3, 4)
    assert "expected ?" in summary.line()


def test_frames_beyond_expected_are_counted():
    accounting = SeriesAccounting(series_id=2, expected=2)
    for index in (0, 1, 2):
        accounting.record_frame(index)
    assert accounting.summary().received == 3


def test_frames_undecodable_in_a_worker_are_merged_into_the_summary():
    accounting = SeriesAccounting(series_id=4, expected=5)
    for index in range(5):
        accounting.record_frame(index)
    accounting.record_undecodable(None, "bad JSON")
    summary = accounting.summary()
    merged = summary.with_undecodable({3: "truncated blob (series 4, frame 3, at decompression)"})
    assert merged.received == 4 and merged.undecodable == 2 and merged.lost == 2
    assert merged.reasons == {"bad JSON": 1, "truncated blob (series 4, frame 3, at decompression)": 1}
    assert merged.line() == "frames: expected 5, received 4, lost 2 (undecodable 2)"
    assert summary.received == 5 and summary.undecodable == 1  # the ingest's summary is unchanged
    assert summary.with_undecodable({}) is summary
