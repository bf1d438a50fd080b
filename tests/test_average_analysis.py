"""The collector's average-pattern analyzer: built in the background when the service starts, so
that the end of the first series does not hold up the collector for the seconds its tables take."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stream import analysis_setup
from stream.analysis_setup import AnalysisSetup, AverageAnalysis


@pytest.fixture
def builds(monkeypatch):
    """The names of the threads that built an analyzer cache (the real one, counted)."""
    names = []
    real = analysis_setup.AnalyzerCache

    class CountingCache(real):
        def __init__(self, setup):
            names.append(threading.current_thread().name)
            super().__init__(setup)

    monkeypatch.setattr(analysis_setup, "AnalyzerCache", CountingCache)
    return names


def test_tables_are_built_once_in_their_own_thread(builds):
    average = AverageAnalysis(AnalysisSetup.default()).prepare_in_background()
    assert average.prepare_in_background() is average  # a second call starts nothing
    analyzer = average.analyzer()
    assert builds == ["braggmap-average-tables"]
    assert average.analyzer() is analyzer
    bins = analyzer.table.bins_shape
    result = average.analyse(_NoMaps(), np.zeros(bins), np.zeros(bins), np.zeros(bins, np.int64), 0)
    assert result is not None and builds == ["braggmap-average-tables"]


def test_without_preparation_the_tables_are_built_when_needed(builds):
    average = AverageAnalysis(AnalysisSetup.default())
    assert builds == []
    average.analyzer()
    assert builds == [threading.current_thread().name]


def test_a_failed_build_is_raised_where_the_analyzer_is_needed(tmp_path):
    setup = AnalysisSetup.default(poni_path=str(tmp_path / "missing.poni"))
    average = AverageAnalysis(setup).prepare_in_background()  # does not raise here
    with pytest.raises(Exception) as first:
        average.analyzer()
    with pytest.raises(Exception) as again:
        average.analyzer()
    assert again.value is first.value
    assert "missing.poni" in str(first.value)


class _NoMaps:
    """Maps without the broadening quantities (nothing to fill in)."""

    statuses: dict = {}
