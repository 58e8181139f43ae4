"""Feedback on replies (POST /feedback): which arm a rated request went to, the latest rating of
each request id, the per-arm approval-rate window and the feedback metrics.

Memory is bounded: the last ``memory`` request ids this process answered (an LRU of request id
-> arm label and last rating), as many unknown ids that were rated, and per arm the last
``window`` up/down ratings. A second rating
of a request id replaces the first: the approval window holds the latest, the counters count the
request once (a change is counted in ``dialogue_feedback_replaced_total``). A request id this
process never answered (another replica's, an old one, a typo) is accepted and counted under
arm ``unmatched``; the report (service/ab_report.py) joins the logs of every process instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from service.metrics import ServiceMetrics
from service.routing import UNMATCHED_ARM

Rating = str | int


def rating_class(rating: Rating) -> str:
    """up ("up", 4-5), down ("down", 1-2) or neutral (3)."""
    if rating == "up" or (isinstance(rating, int) and rating >= 4):
        return "up"
    if rating == "down" or (isinstance(rating, int) and rating <= 2):
        return "down"
    return "neutral"


@dataclass
class _Seen:
    arm: str
    rating: str | None = None  # the class of the latest rating, once rated


@dataclass(frozen=True)
class FeedbackResult:
    arm: str  # the arm label of the rated request, or "unmatched"
    matched: bool
    replaced: bool


class _Window:
    """The last ``size`` up/down ratings of one arm, by request id (a replaced rating is updated
    in place; a rating changed to neutral leaves the window)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: OrderedDict[str, int] = OrderedDict()
        self.ups = 0

    def put(self, request_id: str, approval: int | None) -> None:
        old = self.values.pop(request_id, None)
        if old is not None:
            self.ups -= old
        if approval is None:
            return
        self.values[request_id] = approval
        self.ups += approval
        while len(self.values) > self.size:
            _, dropped = self.values.popitem(last=False)
            self.ups -= dropped

    def rate(self) -> float | None:
        return self.ups / len(self.values) if self.values else None


class FeedbackTracker:
    """Remembers recent request ids and turns ratings into metrics (thread-safe)."""

    def __init__(self, metrics: ServiceMetrics, *, memory: int, window: int) -> None:
        self.metrics = metrics
        self.memory = memory
        self.window = window
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._unmatched: OrderedDict[str, _Seen] = OrderedDict()
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def remember(self, request_id: str, arm: str) -> None:
        """An answered request (its arm label), so that a rating of it finds its arm."""
        with self._lock:
            self._seen[request_id] = _Seen(arm)
            self._seen.move_to_end(request_id)
            while len(self._seen) > self.memory:
                self._seen.popitem(last=False)

    def arm_of(self, request_id: str) -> str | None:
        with self._lock:
            seen = self._seen.get(request_id)
            return None if seen is None or seen.arm == UNMATCHED_ARM else seen.arm

    def rate(self, request_id: str, rating: Rating) -> FeedbackResult:
        """Record a rating; the second rating of a request id replaces the first."""
        cls = rating_class(rating)
        with self._lock:
            seen = self._seen.get(request_id) or self._unmatched.get(request_id)
            if seen is None:  # never answered here: kept apart (a repeat is not counted twice,
                # and unknown ids never push answered ones out of memory)
                seen = self._unmatched[request_id] = _Seen(UNMATCHED_ARM)
                while len(self._unmatched) > self.memory:
                    self._unmatched.popitem(last=False)
            matched = seen.arm != UNMATCHED_ARM
            replaced = seen.rating is not None
            seen.rating = cls
            rate = None
            if matched:
                window = self._windows.setdefault(seen.arm, _Window(self.window))
                window.put(request_id, {"up": 1, "down": 0}.get(cls))
                rate = window.rate()
            arm = seen.arm
        self.metrics.observe_feedback(arm, cls, replaced=replaced)
        if rate is not None:
            self.metrics.set_approval_rate(arm, rate)
        return FeedbackResult(arm=arm, matched=matched, replaced=replaced)
