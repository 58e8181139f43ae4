"""Measuring a generator against malicious targets (He & Glass 2020, section 3): the target lists
(sampled, or grown with paraphrases), the thresholds T_out/T_in from test-set likelihoods, and the
hit-rate report of gibbs-enum searches (:mod:`training.methods.malicious.attack`)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueSplits, load_splits
from training.core.generator import PairSet, corpus_nll
from training.methods.malicious.attack import (
    GibbsEnumConfig,
    HitThresholds,
    SearchMode,
    attack,
)
from training.methods.malicious.lm import ResponseLM

logger = logging.getLogger(__name__)


def sample_targets(targets: Sequence[str], limit: int, seed: int) -> list[str]:
    """All targets, or a seeded sample of ``limit`` of them in list order."""
    if not limit or limit >= len(targets):
        return list(targets)
    keep = sorted(random.Random(seed).sample(range(len(targets)), limit))
    return [targets[i] for i in keep]


def augment_targets(
    targets: Sequence[str], paraphrases: Sequence[Sequence[str]], copies: int
) -> list[str]:
    """Each target followed by its first ``copies`` paraphrases that differ from it (section 4.2)."""
    if len(paraphrases) != len(targets):
        raise ValueError(f"{len(paraphrases)} paraphrase rows for {len(targets)} targets")
    out: dict[str, None] = {}
    for target, para in zip(targets, paraphrases, strict=True):
        out.setdefault(target)
        for p in [p for p in para if p != target][:copies]:
            out.setdefault(p)
    return list(out)


# --- thresholds and attack reports --------------------------------------------------------------


@dataclass
class AttackContext:
    """A model under attack with its thresholds: T_out from ``reference`` (default: itself)."""

    responder: GenerativeResponder
    lm: ResponseLM | None
    thresholds: HitThresholds
    test_ppl: float
    lm_test_ppl: float | None
    splits: DialogueSplits  # loaded once for T_out; negative training reuses its train split


def average_log_likelihood(model: Seq2SeqTransformer, pairs: PairSet) -> float:
    """Mean token log-likelihood (EOS included) of the test responses: T_out (section 3.2)."""
    total, count = corpus_nll(model, pairs)
    return -total / max(count, 1)


@torch.no_grad()
def lm_average_log_likelihood(
    lm: ResponseLM, tok: DialogueTokenizer, responses: Sequence[str], batch: int = 256
) -> float:
    """Mean token log-likelihood of test responses under the LM: T_in.

    Scored like ``R(x)`` in the search (eq. 8): the response's own tokens after ``<s>``, no EOS.
    """
    longest = lm.responder.inputs.max_target_len - 1  # as the LM saw responses in training
    ids = [r[:longest] for r in tok.encode_texts(list(responses)) if r]
    total, count = 0.0, 0
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        x = tok.pad(chunk, lm.device)
        logp = lm.token_log_probs(x)
        mask = x.ne(tok.pad_id)
        total += float((logp * mask).sum())
        count += int(mask.sum())
    return total / max(count, 1)


def load_attack_context(
    bundle: Path,
    data_dir: Path,
    *,
    lm_bundle: Path | None = None,
    reference: Path | None = None,
    device: torch.device | str = "cpu",
) -> AttackContext:
    """Load the model (and LM) and compute T_out / T_in on the DailyDialog test split."""
    responder = GenerativeResponder.load(bundle, device=device)
    splits = load_splits(data_dir, responder.inputs.max_context_turns)
    test = splits.test
    pairs = PairSet.encode(test, responder.tokenizer, responder.inputs)
    own = average_log_likelihood(responder.model, pairs)
    t_out = own
    if reference is not None and Path(reference) != Path(bundle):
        ref = GenerativeResponder.load(reference, device=device)
        t_out = average_log_likelihood(ref.model, PairSet.encode(test, ref.tokenizer, ref.inputs))
    lm, t_in = None, None
    if lm_bundle is not None:
        lm = ResponseLM.load(lm_bundle, device=device)
        if lm.responder.tokenizer.to_str() != responder.tokenizer.to_str():
            raise ValueError(f"LM {lm_bundle} and model {bundle} use different tokenizers")
        t_in = lm_average_log_likelihood(lm, responder.tokenizer, [e.response for e in test])
    return AttackContext(
        responder,
        lm,
        HitThresholds(t_out=t_out, t_in=t_in),
        test_ppl=math.exp(-own),
        lm_test_ppl=None if t_in is None else math.exp(-t_in),
        splits=splits,
    )


def attack_report(
    ctx: AttackContext,
    targets: Sequence[str],
    cfg: GibbsEnumConfig,
    modes: Sequence[SearchMode],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Run gibbs-enum in each mode and collect rates, thresholds and every outcome."""
    r = ctx.responder
    searches = {}
    for mode in modes:
        result = attack(
            r.model, r.tokenizer, targets, cfg, ctx.thresholds, mode=mode, lm=ctx.lm, seed=seed
        )
        searches[mode] = result.to_dict()
    return {
        "bundle": r.bundle_id,
        "num_targets": len(targets),
        "test_ppl": round(ctx.test_ppl, 3),
        "lm_test_ppl": None if ctx.lm_test_ppl is None else round(ctx.lm_test_ppl, 3),
        "thresholds": asdict(ctx.thresholds),
        "search": asdict(cfg),
        "searches": searches,
    }


# --- Algorithm 1 --------------------------------------------------------------------------------
