"""What a backend answers one request with, and what the safety filter did to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BlockReason = Literal["blocklist", "classifier", "risk"]
BlockAction = Literal["reranked", "replaced"]


@dataclass(frozen=True)
class Block:
    """Why a backend's first reply was blocked and what was served instead."""

    reason: BlockReason
    action: BlockAction


@dataclass
class Answer:
    """One request's result from a backend."""

    text: str
    candidates: list[tuple[str, float]] | None = None
    generated_tokens: int = 0
    block: Block | None = None  # set when the safety filter blocked the first reply
