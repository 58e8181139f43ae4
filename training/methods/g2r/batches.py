"""Retriever training batches and the objective the Trainer runs: contexts with their positives,
shared random negatives and the teacher's scores (eqs. 2 and 4-5 in training/methods/g2r/losses.py)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.biencoder import BiEncoder
from models.generator import InputConfig
from models.tokenizer import DialogueTokenizer
from training.methods.g2r.data import RetrievalData
from training.methods.g2r.losses import (
    G2RDistillationLoss,
)

# --- batches and the retriever jobs --------------------------------------------------------------


@dataclass
class RetrievalBatch:
    """One update: B contexts, M distinct candidate responses, and per-(context, response) roles."""

    context_ids: Tensor  # (B, S)
    response_ids: Tensor  # (M, T)
    positive: Tensor  # (B, M) bool: sampled positives of each context
    negative: Tensor  # (B, M) bool: in-batch and random responses that are no positive of it
    teacher: Tensor  # (B, M) float: G(c, r) on positives, NaN elsewhere


class RetrievalTrainSet:
    """D^G tokenised once; batches of distinct contexts with their positives and shared negatives."""

    def __init__(
        self,
        data: RetrievalData,
        tokenizer: DialogueTokenizer,
        inputs: InputConfig,
        *,
        positives_per_context: int,
        random_negatives: int,
        seed: int = 0,
    ) -> None:
        # Text ids: the response set first (what random negatives are drawn from), then any
        # positive that is not in it; equal texts share an id, so they never act as negatives.
        ids: dict[str, int] = {t: i for i, t in enumerate(data.responses)}
        for texts in data.positives:
            for t in texts:
                ids.setdefault(t, len(ids))
        self.response_ids = tokenizer.encode_responses(list(ids), inputs.max_target_len)
        self.positives = [[ids[t] for t in texts] for texts in data.positives]
        self.scores = data.teacher_scores
        self.context_ids = tokenizer.encode_contexts(
            [list(c)[-inputs.max_context_turns :] for c in data.contexts], inputs.max_source_len
        )
        self.n_response_set = len(data.responses)
        self.tokenizer = tokenizer
        self.positives_per_context = positives_per_context
        self.random_negatives = random_negatives
        self.seed = seed

    def __len__(self) -> int:
        return len(self.context_ids)

    def context_lengths(self) -> list[int]:
        return [len(c) for c in self.context_ids]

    def collate(self, indices: Sequence[int], device: torch.device | str = "cpu") -> RetrievalBatch:
        # A pure function of the indices, so a resumed run sees the same negatives.
        key = zlib.crc32(np.asarray(indices, dtype=np.int64).tobytes())
        rng = np.random.default_rng([self.seed, key])
        sampled: list[list[tuple[int, float]]] = []
        for i in indices:
            pos, sc = self.positives[i], self.scores[i]
            keep = list(range(len(pos)))
            if len(keep) > self.positives_per_context:  # the first (gold) always stays
                rest = rng.choice(len(pos) - 1, self.positives_per_context - 1, replace=False)
                keep = [0, *sorted(int(j) + 1 for j in rest)]
            sampled.append([(pos[j], sc[j] if sc is not None else math.nan) for j in keep])
        n_neg = min(self.random_negatives, self.n_response_set)
        negatives = rng.choice(self.n_response_set, n_neg, replace=False).tolist()
        columns = list(dict.fromkeys([p for row in sampled for p, _ in row] + negatives))
        col = {r: j for j, r in enumerate(columns)}
        b, m = len(indices), len(columns)
        positive = torch.zeros(b, m, dtype=torch.bool)
        negative = torch.ones(b, m, dtype=torch.bool)
        teacher = torch.full((b, m), math.nan)
        for row, (i, pairs) in enumerate(zip(indices, sampled, strict=True)):
            for p in self.positives[i]:  # every positive of the context, sampled or not
                if p in col:
                    negative[row, col[p]] = False
            for p, s in pairs:
                positive[row, col[p]] = True
                teacher[row, col[p]] = s
        device = torch.device(device)
        return RetrievalBatch(
            context_ids=self.tokenizer.pad([self.context_ids[i] for i in indices], device),
            response_ids=self.tokenizer.pad(
                [self.response_ids[r] or [self.tokenizer.unk_id] for r in columns], device
            ),
            positive=positive.to(device),
            negative=negative.to(device),
            teacher=teacher.to(device),
        )


class RetrievalObjective:
    """Trainer objective: embed the batch in one forward, score by dot product, apply eq. 2 / eq. 5."""

    def __init__(self, loss: G2RDistillationLoss) -> None:
        self.loss = loss

    def __call__(self, model: nn.Module, batch: RetrievalBatch) -> tuple[Tensor, dict[str, float]]:
        ctx, resp = model(batch.context_ids, batch.response_ids)
        with torch.autocast(ctx.device.type, enabled=False):  # scores in fp32 under bf16 autocast
            scores = BiEncoder.score(ctx.float(), resp.float())  # (B, M)
        return self.loss(scores, batch.positive, batch.negative, batch.teacher)
