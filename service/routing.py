"""A/B routing: which backend answers a conversation (docs/design.md, "A/B routing").

The arm is a pure function of ``(salt, session_id)``: the salted SHA-256 of the session id is
read as a number in [0, 1) and looked up in the cumulative weights, so a conversation keeps its
arm across requests and replicas, and changing the salt reshuffles everyone. Without a session id
the arm is drawn at random; an explicit backend in the request overrides both.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Mapping

BACKENDS = ("generative", "retrieval")
OVERRIDE_ARM = (
    "override"  # the arm label of requests that named their backend or arm (not in the test)
)
UNMATCHED_ARM = "unmatched"  # the arm label of feedback on a request id this process never answered
# Labels the metrics use for something other than an arm: no arm may be called that.
RESERVED_ARM_LABELS = frozenset({OVERRIDE_ARM, UNMATCHED_ARM, "none", "auto"})
ARM_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

_HASH_SCALE = float(1 << 64)


def parse_weights(spec: str) -> dict[str, float]:
    """``"generative=0.2,retrieval=0.8"`` -> normalised weights; raises ValueError when malformed."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"AB_WEIGHTS entry {part.strip()!r} is not of the form arm=weight")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(
                f"AB_WEIGHTS weight {value.strip()!r} for {name!r} is not a number"
            ) from None
        weights[name] = weight
    return validate_weights(weights)


def validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Check arm names and weights and normalise them to sum to 1."""
    unknown = sorted(set(weights) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown A/B arm(s) {unknown}; arms are {list(BACKENDS)}")
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"A/B weights must be finite and >= 0, got {dict(weights)}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("A/B weights must not all be zero")
    return {name: weights[name] / total for name in BACKENDS if name in weights}


def session_hash(salt: str, session_id: str) -> str:
    """What the logs write instead of a session id: 32 hex digits of sha256(salt NUL "log" NUL
    session_id); never the arm-assignment hash itself (that one is derived from AB_SALT alone)."""
    return hashlib.sha256(f"{salt}\x00log\x00{session_id}".encode()).hexdigest()[:32]


def session_point(salt: str, session_id: str) -> float:
    """Where a session falls in [0, 1): the first 8 bytes of sha256(salt NUL session_id)."""
    digest = hashlib.sha256(f"{salt}\x00{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SCALE


def assign_arm(
    salt: str,
    session_id: str | None,
    weights: Mapping[str, float],
    *,
    rng: random.Random | None = None,
) -> str:
    """The arm of a conversation: sticky per ``(salt, session_id)``, random without a session id."""
    point = (rng or random).random() if session_id is None else session_point(salt, session_id)
    total = sum(weights.values())
    cumulative = 0.0
    last = ""
    for name in sorted(weights):  # sorted: the result must not depend on the settings' order
        if weights[name] <= 0:
            continue
        cumulative += weights[name] / total
        last = name
        if point < cumulative:
            return name
    return last  # float rounding can leave the cumulative sum a hair under 1


def choose_arm(
    salt: str,
    session_id: str | None,
    weights: Mapping[str, float],
    requested_backend: str | None,
) -> tuple[str, str]:
    """``(arm, backend to try first)``; an explicitly requested backend overrides the A/B test."""
    if requested_backend is not None:
        return OVERRIDE_ARM, requested_backend
    arm = assign_arm(salt, session_id, weights)
    return arm, arm
