"""The output safety filter: replies checked against a blocklist and/or the DiaSafety classifier.

Modes (``SAFETY_FILTER``): ``off``; ``blocklist`` (whole-token phrase match, models/safety.py);
``classifier`` (P(unsafe | last context turn, reply) >= threshold, the classifier bundle's own
threshold unless ``SAFETY_THRESHOLD`` overrides it); ``both`` (blocklist first, then the
classifier on what the blocklist let through); ``auto`` (the default) = ``both`` when a classifier
bundle is present, else ``blocklist`` when ``SAFETY_BLOCKLIST`` names a file, else ``off``.

The classifier sees the *last* context turn only: DiaSafety contexts are single utterances, so
that is the input it was trained on; a turn it cannot read (another language, emoji only, a bare
link: models/safety.py, ``readable_turn``) is judged as an empty context, so the verdict rests on
the reply: such a turn does not by itself block one.

Risk (``SAFETY_RISK``, on by default whenever the filter is): when the last user turn states a
self-harm risk (a whole-token phrase of ``SAFETY_RISK_PHRASES``, by default
models/safety_risk_phrases.txt), a reply other than ``SAFETY_RISK_REPLY`` ignores it (DiaSafety's
"Risk Ignorance": "i want to kill myself ." -> "i don't know .") and is blocked with reason
``risk``; :meth:`SafetyFilter.fallback_for` gives the risk reply, which points to help, as the
replacement for such a turn.

What happens to a blocked reply is the policy here, which the backends (service/backends.py) call
in their worker thread, batched like the model call: the retriever's reply is re-ranked
(:meth:`SafetyFilter.rerank`: its best-ranked safe candidate of the top ``SAFETY_CANDIDATES``,
unsafe candidates dropped from the list it returns); the generator's is re-sampled
(:meth:`SafetyFilter.resample`: ``SAFETY_CANDIDATES`` alternatives, the first safe one); with none
safe the reply is the fallback reply (the risk reply after a stated risk). Every blocked reply
that reaches a client is counted once in ``dialogue_safety_blocked_total{backend, reason,
action}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from models.blocklist import Blocklist, RiskDetector
from models.bundle import BundleError
from models.generator import Reply
from models.safety import SafetyClassifier
from models.text import normalize_text
from service.answer import Answer, Block, BlockAction, BlockReason
from service.metrics import ServiceMetrics
from service.settings import Settings

__all__ = ["Block", "BlockAction", "BlockReason", "SafetyFilter", "load_safety_filter"]

logger = logging.getLogger(__name__)

FilterMode = Literal["off", "blocklist", "classifier", "both"]
Hit = tuple[str, float]  # a retrieved response and its score
# (rows, k) -> k alternative replies for each row: how the generator re-samples blocked replies
Sampler = Callable[[list[int], int], list[list[Reply]]]


class SafetyFilter:
    """Judges replies; one instance is shared by the backends loaded together with it."""

    def __init__(
        self,
        mode: FilterMode,
        *,
        metrics: ServiceMetrics,
        blocklist: Blocklist | None = None,
        classifier: SafetyClassifier | None = None,
        threshold: float | None = None,
        fallback_reply: str = "",
        candidates: int = 4,
        risk: RiskDetector | None = None,
        risk_reply: str = "",
    ) -> None:
        if mode in ("classifier", "both") and classifier is None:
            raise ValueError(f"safety filter mode {mode!r} needs a classifier")
        if risk is not None and not risk_reply.strip():
            raise ValueError("a risk detector needs a risk reply")
        self.mode: FilterMode = mode
        self.metrics = metrics
        self.blocklist = blocklist if mode in ("blocklist", "both") and blocklist else None
        self.classifier = classifier if mode in ("classifier", "both") else None
        self.threshold = (
            threshold
            if threshold is not None
            else (classifier.threshold if classifier is not None else 0.5)
        )
        self.fallback_reply = fallback_reply
        self.candidates = candidates
        self.risk = risk if mode != "off" and risk else None
        self.risk_reply = risk_reply
        self._risk_reply_normalised = normalize_text(risk_reply)

    @property
    def enabled(self) -> bool:
        return self.blocklist is not None or self.classifier is not None or self.risk is not None

    def states_risk(self, turn: str) -> bool:
        """Whether ``turn`` (a user turn) states a self-harm risk the reply must not ignore."""
        return self.risk is not None and self.risk.find(turn) is not None

    def fallback_for(self, turn: str) -> str:
        """The reply to serve for ``turn`` when no candidate is safe: the risk reply when the
        turn states a risk, else the fallback reply."""
        return self.risk_reply if self.states_risk(turn) else self.fallback_reply

    def describe(self) -> str:
        parts = []
        if self.blocklist is not None:
            parts.append(f"blocklist of {len(self.blocklist)} phrases")
        if self.classifier is not None:
            parts.append(f"classifier {self.classifier.bundle_id} at threshold {self.threshold:g}")
        if self.risk is not None:
            parts.append(f"risk check of {len(self.risk)} phrases")
        return " + ".join(parts) or "off"

    def check(self, contexts: Sequence[str], replies: Sequence[str]) -> list[BlockReason | None]:
        """Why each reply is unsafe (``risk`` / ``blocklist`` / ``classifier``) or None when it
        is safe.

        ``contexts[i]`` is the turn ``replies[i]`` answers. A reply to a turn that states a risk
        is blocked (``risk``) unless it is the risk reply. Runs in a backend's worker thread;
        its time goes into the stage histogram as ``safety``.
        """
        started = time.perf_counter()
        reasons: list[BlockReason | None] = [None] * len(replies)
        if self.risk is not None:
            for i, (turn, reply) in enumerate(zip(contexts, replies, strict=True)):
                if self.states_risk(turn) and normalize_text(reply) != self._risk_reply_normalised:
                    reasons[i] = "risk"
        if self.blocklist is not None:
            for i, reply in enumerate(replies):
                if reasons[i] is None and self.blocklist.find(reply) is not None:
                    reasons[i] = "blocklist"
        if self.classifier is not None:
            rows = [i for i, why in enumerate(reasons) if why is None]
            if rows:
                probs = self.classifier.unsafe_probability(
                    [contexts[i] for i in rows], [replies[i] for i in rows]
                )
                for i, p in zip(rows, probs, strict=True):
                    if p >= self.threshold:
                        reasons[i] = "classifier"
        if replies:
            self.metrics.observe_stage("safety", time.perf_counter() - started)
        return reasons

    # --- the policy for blocked replies ------------------------------------------------------

    def rerank(self, turns: list[str], hits: list[list[Hit]], wanted: list[int]) -> list[Answer]:
        """Retrieval: answers from the safe candidates only, in rank order (``wanted[r]`` of
        them for row r). The candidates a client would see are checked first; the rest of a
        row only when one of those was unsafe."""
        verdicts: list[dict[int, BlockReason | None]] = [{} for _ in hits]

        def check(pairs: list[tuple[int, int]]) -> None:
            reasons = self.check([turns[r] for r, _ in pairs], [hits[r][j][0] for r, j in pairs])
            for (r, j), why in zip(pairs, reasons, strict=True):
                verdicts[r][j] = why

        check([(r, j) for r, row in enumerate(hits) for j in range(min(wanted[r], len(row)))])
        check(
            [
                (r, j)
                for r, row in enumerate(hits)
                if any(verdicts[r].values())
                for j in range(wanted[r], len(row))
            ]
        )
        answers = []
        for r, row in enumerate(hits):
            safe = [row[j] for j in sorted(verdicts[r]) if verdicts[r][j] is None]
            first = verdicts[r].get(0)  # why the top-ranked reply was blocked; None if it was not
            if first is None:
                answers.append(
                    Answer(text=safe[0][0] if safe else "", candidates=safe[: wanted[r]])
                )
            elif safe:
                answers.append(
                    Answer(safe[0][0], safe[: wanted[r]], block=Block(first, "reranked"))
                )
            else:
                answers.append(
                    Answer(self.fallback_for(turns[r]), [], block=Block(first, "replaced"))
                )
        return answers

    def resample(self, turns: list[str], answers: list[Answer], sample: Sampler) -> None:
        """Generation: replace each blocked reply (in place) by the first safe, non-empty one of
        ``candidates`` alternatives that ``sample`` draws for its context, else by the fallback
        reply; ``turns[i]`` is the turn ``answers[i]`` replies to. :meth:`screen` then
        :meth:`settle`, with the alternatives drawn in one call between them."""
        blocked = self.screen(turns, answers)
        if not blocked:
            return
        rows = [b for b, _ in blocked]
        self.settle(
            [turns[b] for b in rows],
            [answers[b] for b in rows],
            [why for _, why in blocked],
            sample(rows, self.candidates),
        )

    def screen(self, turns: list[str], answers: list[Answer]) -> list[tuple[int, BlockReason]]:
        """Check each generated answer; one that ignores a stated self-harm risk is replaced at
        once by the risk reply (no sampled reply would pass: only the risk reply does). Returns
        the rows whose reply was blocked otherwise, with why: they need alternatives
        (:meth:`settle`)."""
        reasons = self.check(turns, [a.text for a in answers])
        blocked: list[tuple[int, BlockReason]] = []
        for i, why in enumerate(reasons):
            if why == "risk":
                answers[i].text = self.fallback_for(turns[i])
                answers[i].block = Block(why, "replaced")
            elif why is not None:
                blocked.append((i, why))
        return blocked

    def settle(
        self,
        turns: list[str],
        answers: list[Answer],
        reasons: list[BlockReason],
        alternatives: list[list[Reply]],
    ) -> None:
        """Replace each blocked answer (in place) by the first safe, non-empty one of its
        ``alternatives`` (checked together in one call), else by the fallback reply; its
        ``generated_tokens`` count the alternatives too."""
        texts = [reply.text for row in alternatives for reply in row]
        alt_turns = [turn for turn, row in zip(turns, alternatives, strict=True) for _ in row]
        alt_reasons = self.check(alt_turns, texts)
        offset = 0
        for turn, answer, reason, row in zip(turns, answers, reasons, alternatives, strict=True):
            options = range(offset, offset + len(row))
            offset += len(row)
            safe = [j for j in options if alt_reasons[j] is None and texts[j].strip()]
            answer.generated_tokens += sum(len(reply.tokens) for reply in row)
            if safe:
                answer.text, answer.block = texts[safe[0]], Block(reason, "reranked")
            else:
                answer.text = self.fallback_for(turn)
                answer.block = Block(reason, "replaced")


def _resolve_mode(settings: Settings, has_classifier: bool) -> FilterMode:
    """``auto`` -> both / blocklist / off; an explicit mode is checked against what exists."""
    mode = settings.safety_filter
    if mode == "auto":
        if has_classifier:
            return "both"
        return "blocklist" if settings.safety_blocklist is not None else "off"
    if mode in ("classifier", "both") and not has_classifier:
        raise BundleError(
            f"SAFETY_FILTER={mode} needs a classifier bundle, but there is no "
            f"{settings.safety_bundle!r} (or any classifier bundle) in {settings.models_dir}"
        )
    return mode


def load_safety_filter(
    settings: Settings,
    metrics: ServiceMetrics,
    bundle_dir: Path | None,
    device: torch.device | str = "cpu",
) -> SafetyFilter:
    """Build the filter the settings ask for, loading (and fully verifying) the classifier bundle
    at ``bundle_dir`` (None: there is none); raises BundleError / ValueError with one clear
    message when the settings cannot be met."""
    mode = _resolve_mode(settings, bundle_dir is not None)
    risk = None
    if settings.safety_risk and mode != "off":
        path = settings.safety_risk_phrases
        if path is not None and not path.is_file():
            raise ValueError(f"SAFETY_RISK_PHRASES {path} is not a file")
        risk = RiskDetector.from_file(path)
        if not risk:
            raise ValueError(f"SAFETY_RISK_PHRASES {path} has no phrases")
    classifier = None
    if bundle_dir is not None and mode != "off":
        # Loaded even for "blocklist" alone: the bundle's blocklist.txt is the default list.
        classifier = SafetyClassifier.load(bundle_dir, device=device)
    blocklist = None
    if settings.safety_blocklist is not None:
        path = settings.safety_blocklist
        if not path.is_file():
            raise ValueError(f"SAFETY_BLOCKLIST {path} is not a file")
        blocklist = Blocklist.from_file(path)
    elif classifier is not None:
        blocklist = classifier.blocklist
    if mode == "blocklist" and not blocklist:
        raise ValueError(
            "SAFETY_FILTER=blocklist needs a blocklist: set SAFETY_BLOCKLIST or provide a "
            "classifier bundle with blocklist.txt"
        )
    if mode == "both" and not blocklist:
        logger.warning("no blocklist (SAFETY_BLOCKLIST or the bundle's): classifier only")
    safety = SafetyFilter(
        mode,
        metrics=metrics,
        blocklist=blocklist,
        classifier=classifier if mode in ("classifier", "both") else None,
        threshold=settings.safety_threshold,
        fallback_reply=settings.safety_fallback_reply,
        candidates=settings.safety_candidates,
        risk=risk,
        risk_reply=settings.safety_risk_reply,
    )
    if settings.safety_filter == "auto" and mode == "off":
        logger.warning(
            "no classifier bundle %r in %s and no SAFETY_BLOCKLIST: the output filter is off",
            settings.safety_bundle,
            settings.models_dir,
        )
    logger.info("safety filter (%s): %s", mode, safety.describe())
    return safety
