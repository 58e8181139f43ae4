"""How a conversation becomes model input: the limits a bundle was trained with, and the encoding.

Generators and retrievers share it (a retriever reads a conversation the way the generators of its
preset do), and both store it in their bundle's ``model_config["inputs"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.tokenizer import DialogueTokenizer


@dataclass(frozen=True)
class InputConfig:
    """How a conversation becomes model input."""

    max_context_turns: int = 1  # most recent turns kept (1 = single-turn pairs, as in the ND paper)
    max_source_len: int = 64  # source pieces kept (the most recent ones)
    max_target_len: int = 32  # response pieces incl. EOS, in training


def encode_contexts(
    tokenizer: DialogueTokenizer,
    inputs: InputConfig,
    contexts: Sequence[Sequence[str]],
    device: torch.device | str = "cpu",
    *,
    normalized: bool = False,
) -> Tensor:
    """Right-padded source ids (B, S) from the last ``max_context_turns`` turns of each context
    (turns oldest first), the last ``max_source_len`` pieces kept; ``normalized``: the turns are
    :func:`~models.text.normalize_text`'s output already."""
    turns = [list(c)[-inputs.max_context_turns :] for c in contexts]
    ids = tokenizer.encode_contexts(turns, inputs.max_source_len, normalized=normalized)
    return tokenizer.pad(ids, device)
