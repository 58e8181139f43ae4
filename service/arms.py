"""Arms as named variants (docs/design.md, "A/B routing"): what is loaded for each arm, and which
arm answers a request.

An arm is a name, a weight, a loaded backend (a bundle; two arms naming the same bundle share one
:class:`~service.backends.Backend`, so one model and one batcher), option defaults and the arm
that answers when it cannot. service/bundles.py builds a :class:`Serving` from the settings
(start-up and every reload: one object, swapped in one assignment); the engine routes with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.backends import Backend
from service.errors import InvalidRequest
from service.routing import OVERRIDE_ARM, assign_arm
from service.schemas import ResponseOptions


@dataclass(frozen=True)
class Arm:
    """One arm as loaded."""

    name: str
    weight: float  # normalised share of sessions (0: reached only by name or as a fallback)
    kind: str  # the backend kind: generative | retrieval
    backend: Backend | None  # None: not loaded (its bundle setting is off, or no bundle)
    options: ResponseOptions | None = None  # defaults under the request's own options
    fallback: str | None = None  # the arm tried next when this one fails (loaded, or None)

    def merged_options(self, requested: ResponseOptions | None) -> ResponseOptions | None:
        """The arm's option defaults with the request's own options over them."""
        if self.options is None:
            return requested
        if requested is None:
            return self.options
        return self.options.model_copy(update=requested.model_dump(exclude_none=True))


@dataclass(frozen=True)
class Route:
    """Where a request goes: its arm label for metrics (the A/B arm, or ``override`` when the
    request named an arm or a backend) and the arms to try, in order."""

    label: str
    order: list[str]
    assigned: bool  # True when the salted hash (or a random draw) chose the arm


@dataclass(frozen=True)
class Serving:
    """Every arm by name (in the settings' order); the unit a reload swaps."""

    arms: dict[str, Arm]
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def backends(self) -> dict[str, Backend]:
        """The loaded backend of every arm that has one, by arm name (shared ones repeat)."""
        return {name: arm.backend for name, arm in self.arms.items() if arm.backend is not None}

    def unique_backends(self) -> list[Backend]:
        """Each loaded backend once (arms may share one)."""
        seen: dict[int, Backend] = {}
        for arm in self.arms.values():
            if arm.backend is not None:
                seen.setdefault(id(arm.backend), arm.backend)
        return list(seen.values())

    def kinds(self) -> list[str]:
        """The backend kinds loaded, in the order generative, retrieval."""
        loaded = {arm.kind for arm in self.arms.values() if arm.backend is not None}
        return [k for k in ("generative", "retrieval") if k in loaded]

    def arm_of_kind(self, kind: str) -> str | None:
        """The arm a request naming backend ``kind`` goes to: the arm named after the kind (the
        AB_WEIGHTS arms), else the heaviest loaded arm of that kind (ties: by name)."""
        if kind in self.arms and self.arms[kind].kind == kind:
            return kind
        candidates = [a for a in self.arms.values() if a.kind == kind and a.backend is not None]
        if not candidates:
            return None
        return min(candidates, key=lambda a: (-a.weight, a.name)).name

    def route(
        self,
        salt: str,
        session_id: str | None,
        *,
        arm: str | None = None,
        backend: str | None = None,
        fallback: bool = True,
    ) -> Route:
        """The arms to try for a request: the named arm, else the arm of the named backend kind,
        else the A/B arm of the session; then (``fallback``) that arm's fallback arm."""
        if arm is not None and backend is not None:
            raise InvalidRequest('name an "arm" or a "backend", not both')
        if arm is not None:
            if arm not in self.arms:
                raise InvalidRequest(f"unknown arm {arm!r}; arms are {sorted(self.arms)}")
            first, label, assigned = arm, OVERRIDE_ARM, False
        elif backend is not None:
            chosen = self.arm_of_kind(backend)
            if chosen is None:  # no arm of that kind: "not loaded" (or the fallback answers)
                other = default_fallback(self.arms, backend, exclude="") if fallback else None
                return Route(OVERRIDE_ARM, [f"<{backend}>", *([other] if other else [])], False)
            first, label, assigned = chosen, OVERRIDE_ARM, False
        else:
            first = assign_arm(salt, session_id, self.weights)
            label, assigned = first, True
        order = [first]
        after = self.arms[first].fallback if fallback else None
        if after is not None and after != first:
            order.append(after)
        return Route(label, order, assigned)


def default_fallback(arms: Mapping[str, Arm], kind: str, exclude: str) -> str | None:
    """The old behaviour: the heaviest loaded arm of the other backend kind (ties: by name)."""
    candidates = [
        a for a in arms.values() if a.kind != kind and a.backend is not None and a.name != exclude
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda a: (-a.weight, a.name)).name
