"""Frame accounting: every frame of a series is received, a duplicate, late, undecodable,
dropped, or lost, and the summary says which.

A single-owner object (the ingest thread) with no I/O; the ingest reports its summary at the
series end, or on a time-out when the end never comes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class AccountingSummary:
    """What happened to the frames of one series.

    Attributes
    ----------
    series_id : int
    expected : int or None
        Frames announced by the series header (None when the header did not say or was missed).
    received : int
        Distinct, decodable frame indices received.
    duplicates : int
        Image messages whose frame index had already been received.
    out_of_order : int
        Frames that arrived after a frame with a higher index.
    undecodable : int
        Image messages that could not be decoded (each with a reason in ``reasons``).
    dropped : int
        Frames received but not analysed because the workers could not keep up (overflow).
    malformed : int
        Messages that were not a valid message of any kind (header, image, end).
    missing : tuple of int
        Frame indices below ``expected`` (or below the highest index seen) never received.
    reasons : dict
        Count of each undecodable / malformed reason.
    ended_by : str
        ``"end"`` (series end message), ``"timeout"``, ``"next_series"`` or ``"shutdown"``.
    """

    series_id: int
    expected: int | None
    received: int
    duplicates: int
    out_of_order: int
    undecodable: int
    dropped: int
    malformed: int
    missing: tuple[int, ...]
    reasons: dict[str, int] = field(default_factory=dict)
    ended_by: str = "end"

    def with_undecodable(self, reasons: Mapping[int, str]) -> "AccountingSummary":
        """This summary with frames that were received but could not be decoded downstream.

        The ingest checks only a message's framing (cheap); a payload whose compressed blocks
        are corrupt fails later, in the worker that decompresses it. The collector gathers
        those failures and merges them here: each such frame moves from ``received`` to
        ``undecodable`` and its reason is counted.

        Parameters
        ----------
        reasons : mapping of int to str
            Frame index -> why the frame could not be decoded.

        Returns
        -------
        AccountingSummary
            A new summary (this one is unchanged).
        """
        if not reasons:
            return self
        merged = Counter(self.reasons)
        merged.update(reasons.values())
        return replace(self, received=self.received - len(reasons),
                       undecodable=self.undecodable + len(reasons), reasons=dict(merged))

    @property
    def lost(self) -> int:
        """Frames that were expected and never analysed: missing + undecodable + dropped."""
        return len(self.missing) + self.undecodable + self.dropped

    def line(self) -> str:
        """The one-line summary printed at the end of a series."""
        expected = "?" if self.expected is None else str(self.expected)
        text = f"frames: expected {expected}, received {self.received}, lost {self.lost}"
        extras = {
            "missing": len(self.missing),
            "undecodable": self.undecodable,
            "dropped": self.dropped,
            "duplicates": self.duplicates,
            "out of order": self.out_of_order,
            "malformed messages": self.malformed,
        }
        details = ", ".join(f"{name} {count}" for name, count in extras.items() if count)
        if details:
            text += f" ({details})"
        if self.ended_by != "end":
            text += f" [series ended by {self.ended_by}]"
        return text

    def as_dict(self) -> dict:
        return {
            "series_id": self.series_id,
            "expected": self.expected,
            "received": self.received,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "undecodable": self.undecodable,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "missing": list(self.missing),
            "lost": self.lost,
            "reasons": dict(self.reasons),
            "ended_by": self.ended_by,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "AccountingSummary":
        return cls(
            series_id=int(data["series_id"]),
            expected=None if data.get("expected") is None else int(data["expected"]),
            received=int(data["received"]),
            duplicates=int(data["duplicates"]),
            out_of_order=int(data["out_of_order"]),
            undecodable=int(data["undecodable"]),
            dropped=int(data["dropped"]),
            malformed=int(data["malformed"]),
            missing=tuple(int(i) for i in data.get("missing", ())),
            reasons={str(k): int(v) for k, v in data.get("reasons", {}).items()},
            ended_by=str(data.get("ended_by", "end")),
        )


class SeriesAccounting:
    """Counts what happens to the frames of one series.

    Parameters
    ----------
    series_id : int
    expected : int or None
        Frames announced by the header.
    """

    def __init__(self, series_id: int, expected: int | None) -> None:
        self.series_id = series_id
        self.expected = expected
        self._seen = bytearray(expected or 0)  # 1 = received, 2 = undecodable, 3 = dropped
        self._highest = -1
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.undecodable = 0
        self.dropped = 0
        self.malformed = 0
        self.reasons: Counter[str] = Counter()

    def _slot(self, index: int) -> int:
        if index >= len(self._seen):
            self._seen.extend(bytes(max(index + 1 - len(self._seen), len(self._seen))))
        return self._seen[index]

    def _arrive(self, index: int) -> bool:
        """Common bookkeeping of an image message; False when it is a duplicate."""
        if index < 0:
            raise ValueError(f"frame index {index} is negative")
        if self._slot(index):
            self.duplicates += 1
            return False
        if index < self._highest:
            self.out_of_order += 1
        self._highest = max(self._highest, index)
        return True

    def record_frame(self, index: int) -> bool:
        """A decodable image message arrived; returns False for a duplicate (not to be analysed)."""
        if not self._arrive(index):
            return False
        self._seen[index] = 1
        self.received += 1
        return True

    def record_undecodable(self, index: int | None, reason: str) -> None:
        """An image message that could not be decoded (index None when unreadable)."""
        self.reasons[reason] += 1
        if index is None:
            self.undecodable += 1
            return
        if self._arrive(index):
            self._seen[index] = 2
            self.undecodable += 1

    def record_dropped(self, index: int) -> None:
        """A received frame that was not analysed (overflow); it was counted as received first."""
        if self._slot(index) == 1:
            self._seen[index] = 3
            self.received -= 1
            self.dropped += 1

    def record_malformed(self, reason: str) -> None:
        """A message that is not a valid header, image or end."""
        self.malformed += 1
        self.reasons[reason] += 1

    def missing_indices(self) -> tuple[int, ...]:
        limit = self.expected if self.expected is not None else self._highest + 1
        return tuple(i for i in range(limit) if i >= len(self._seen) or not self._seen[i])

    @property
    def complete(self) -> bool:
        """All expected frames accounted for (received, undecodable or dropped)."""
        return self.expected is not None and not self.missing_indices()

    def summary(self, ended_by: str = "end") -> AccountingSummary:
        return AccountingSummary(
            series_id=self.series_id,
            expected=self.expected,
            received=self.received,
            duplicates=self.duplicates,
            out_of_order=self.out_of_order,
            undecodable=self.undecodable,
            dropped=self.dropped,
            malformed=self.malformed,
            missing=self.missing_indices(),
            reasons=dict(self.reasons),
            ended_by=ended_by,
        )
