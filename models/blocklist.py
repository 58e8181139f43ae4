"""Whole-token phrase lists over normalised text: the blocklist and the self-harm risk phrases.

* :class:`Blocklist` matches whole-token phrases (LDNOOBW-style lists) in normalised text: "ass"
  matches "you ass !" but not "class". G2R's response-set filter (training/methods/g2r/) and the
  service's output filter use this one implementation; a classifier bundle may carry one as
  ``blocklist.txt`` (models/safety.py).
* :class:`RiskDetector` finds explicit statements of self-harm risk ("i want to kill myself") in
  a user turn with the same matcher, from ``safety_risk_phrases.txt`` beside this module
  (DiaSafety's "Risk Ignorance": service/safety.py replaces a reply that ignores one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from models.text import normalize_text

BLOCKLIST_FILE = "blocklist.txt"
DEFAULT_RISK_PHRASES = Path(__file__).with_name("safety_risk_phrases.txt")


def load_blocklist(path: Path | None) -> list[str]:
    """Normalised blocklist phrases, one per line (``#`` comments and blank lines skipped)."""
    if path is None:
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return sorted({normalize_text(x) for x in lines if x.strip() and not x.startswith("#")} - {""})


class Blocklist:
    """Whole-token phrase matcher over normalised text: "ass" matches "you ass !", not "class"."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases: tuple[str, ...] = tuple(
            sorted({p for p in (normalize_text(x) for x in phrases) if p})
        )
        self._pattern: re.Pattern[str] | None = None
        if self.phrases:
            # Longest first within the alternation, so "hot pocket" wins over "hot"; the
            # look-arounds make a phrase match only between whitespace (or the text's ends).
            ordered = sorted(self.phrases, key=len, reverse=True)
            pattern = r"(?<!\S)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\S)"
            self._pattern = re.compile(pattern)

    @classmethod
    def from_file(cls, path: Path) -> Blocklist:
        """One phrase per line; ``#`` comments and blank lines skipped."""
        return cls(load_blocklist(path))

    def __len__(self) -> int:
        return len(self.phrases)

    def find(self, text: str, *, normalised: bool = False) -> str | None:
        """The first blocklisted phrase in ``text``, or None; ``normalised=True`` skips
        normalising text that already went through :func:`normalize_text` (it is idempotent)."""
        if self._pattern is None:
            return None
        match = self._pattern.search(text if normalised else normalize_text(text))
        return match.group() if match else None

    def to_text(self) -> str:
        """The phrases one per line, as :meth:`from_file` reads them."""
        return "".join(f"{p}\n" for p in self.phrases)


class RiskDetector:
    """Explicit statements of self-harm risk in a (user) turn: whole-token phrase matching over
    normalised text, the :class:`Blocklist` matcher over a list of risk phrases."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self._matcher = Blocklist(phrases)

    @classmethod
    def from_file(cls, path: Path | None = None) -> RiskDetector:
        """One phrase per line (``#`` comments skipped); None = the list shipped with the code."""
        return cls(load_blocklist(DEFAULT_RISK_PHRASES if path is None else path))

    @property
    def phrases(self) -> tuple[str, ...]:
        return self._matcher.phrases

    def __len__(self) -> int:
        return len(self._matcher)

    def find(self, text: str) -> str | None:
        """The first risk phrase stated in ``text``, or None."""
        return self._matcher.find(text)
