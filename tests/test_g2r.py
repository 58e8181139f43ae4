"""G2R: losses by hand, Hits@K, teacher scores, the response filter, resumable augmentation shards,
teachers (our bundles and a tiny local Hugging Face model), batches, and the tiny pipeline end to end."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import verify_bundle
from models.decoding import sequence_log_likelihood
from models.device import native_bf16
from models.generator import GenerativeResponder, InputConfig
from models.retriever import RetrievalResponder
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.config import AugmentConfig, get_retriever_preset
from training.core.data import DialogueExample
from training.core.distributed import DistContext
from training.methods.g2r.augment import (
    ContextGroup,
    augment_contexts,
    augmentation_status,
    read_shards,
    shard_path,
)
from training.methods.g2r.batches import RetrievalTrainSet
from training.methods.g2r.data import ResponseFilter, RetrievalData, build_retrieval_data
from training.methods.g2r.hf_teacher import HFTeacher
from training.methods.g2r.job import DEFAULT_BLOCKLIST, load_blocklist
from training.methods.g2r.losses import (
    G2RDistillationLoss,
    RetrievalCrossEntropyLoss,
    contrastive_cross_entropy,
    distillation_cross_entropy,
    hits_at_k,
    hits_candidates,
    symmetric_contrastive_cross_entropy,
)
from training.methods.g2r.teachers import BundleTeacher, teacher_scores

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
LN3 = math.log(3.0)

# --- losses, worked out by hand ------------------------------------------------------------------

# Two contexts, three candidate responses. Row 0: positives {0, 1}, negative {2}. Row 1: positive
# {1}, negative {0}; column 2 is neither (e.g. an unsampled positive of that context).
SCORES = torch.tensor([[2.0, 0.0, LN3], [0.0, 1.0, 5.0]])
POSITIVE = torch.tensor([[True, True, False], [False, True, False]])
NEGATIVE = torch.tensor([[False, False, True], [True, False, False]])
# Teacher scores G(c, r) on row 0's positives; row 1 has none (not augmented).
TEACHER = torch.tensor([[LN3, 0.0, math.nan], [math.nan, math.nan, math.nan]])


def test_contrastive_cross_entropy_matches_eq2_by_hand() -> None:
    # pair (0,0): -log e^2 / (e^2 + e^ln3)     = log(1 + 3e^-2) = 0.340753
    # pair (0,1): -log e^0 / (e^0 + 3)          = log 4          = 1.386294
    # pair (1,1): -log e^1 / (e^1 + e^0)        = log(1 + e^-1)  = 0.313262
    # mean over the 3 positive pairs = 2.040309 / 3 = 0.680103
    expected = (math.log(1 + 3 * math.exp(-2)) + math.log(4) + math.log(1 + math.exp(-1))) / 3
    assert expected == pytest.approx(0.680103, abs=1e-6)
    assert contrastive_cross_entropy(SCORES, POSITIVE, NEGATIVE).item() == pytest.approx(expected)
    assert RetrievalCrossEntropyLoss()(SCORES, POSITIVE, NEGATIVE).item() == pytest.approx(expected)


def test_symmetric_cross_entropy_adds_the_response_to_context_direction_by_hand() -> None:
    # Transposed, each response column picks its context. Column 0: positive context 0 (2),
    # negative context 1 (0): log(1 + e^-2) = 0.126928. Column 1 is a positive of both contexts
    # and has no negative: 0 for each of its two pairs. Column 2 is no one's positive.
    # Backward mean over the 3 pairs = 0.042309; with the forward 0.680103: (sum) / 2 = 0.361206
    backward = math.log(1 + math.exp(-2)) / 3
    assert contrastive_cross_entropy(SCORES.T, POSITIVE.T, NEGATIVE.T).item() == pytest.approx(
        backward
    )
    both = symmetric_contrastive_cross_entropy(SCORES, POSITIVE, NEGATIVE).item()
    assert both == pytest.approx(0.361206, abs=1e-6)
    loss, logs = G2RDistillationLoss(alpha=1.0, symmetric=True)(SCORES, POSITIVE, NEGATIVE, TEACHER)
    assert loss.item() == pytest.approx(both) and set(logs) == {"ce"}


def test_distillation_cross_entropy_matches_eq4_by_hand() -> None:
    # Row 0 only (row 1 has no teacher scores). Teacher: softmax(ln3, 0) = (3/4, 1/4), the
    # negative gets 0. Student: Z = e^2 + e^0 + e^ln3 = e^2 + 4 = 11.389056, ln Z = 2.432653;
    # loss = -(3/4 (2 - ln Z) + 1/4 (0 - ln Z)) = ln Z - 1.5 = 0.932653
    kd = distillation_cross_entropy(SCORES, TEACHER, POSITIVE, NEGATIVE, temperature=1.0)
    assert kd.item() == pytest.approx(math.log(math.exp(2) + 4) - 1.5)
    assert kd.item() == pytest.approx(0.932653, abs=1e-6)
    # T = 2: teacher softmax(ln3/2, 0) = (sqrt3, 1) / (sqrt3 + 1) = (0.633975, 0.366025);
    # student Z = e^1 + e^0 + e^(ln3/2) = e + 1 + sqrt3 = 5.450332, ln Z = 1.695677;
    # loss = -(0.633975 (1 - ln Z) + 0.366025 (0 - ln Z)) = ln Z - 0.633975 = 1.061702
    kd2 = distillation_cross_entropy(SCORES, TEACHER, POSITIVE, NEGATIVE, temperature=2.0)
    assert kd2.item() == pytest.approx(1.061702, abs=1e-6)


def test_g2r_loss_is_eq5_and_alpha_one_skips_kd() -> None:
    # 0.9 * 0.680103 + 0.1 * 0.932653 = 0.705358
    loss, logs = G2RDistillationLoss(alpha=0.9, temperature=1.0)(
        SCORES, POSITIVE, NEGATIVE, TEACHER
    )
    assert loss.item() == pytest.approx(0.705358, abs=1e-6)
    assert set(logs) == {"ce", "kd"}
    ce_only, logs = G2RDistillationLoss(alpha=1.0)(SCORES, POSITIVE, NEGATIVE, TEACHER)
    assert ce_only.item() == pytest.approx(0.680103, abs=1e-6) and set(logs) == {"ce"}


def test_losses_give_finite_gradients_with_missing_teacher_scores() -> None:
    scores = SCORES.clone().requires_grad_(True)
    loss, _ = G2RDistillationLoss(alpha=0.5)(scores, POSITIVE, NEGATIVE, TEACHER)
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert scores.grad[1, 2] == 0  # a column that is neither positive nor negative is ignored
    none = torch.full_like(TEACHER, math.nan)
    assert distillation_cross_entropy(SCORES, none, POSITIVE, NEGATIVE).item() == 0.0


def test_teacher_scores_match_eq3_and_eq6_by_hand() -> None:
    # log P(r|c) = ln 0.5 over |r| = 2 tokens; dummy contexts give P(r|d) = 0.1 and 0.3, so
    # P(r) = 0.2. LL = ln 0.5 / 2 = -0.346574; MI = (ln 0.5 - ln 0.2) / 2 = ln 2.5 / 2 = 0.458145
    ll, mi = teacher_scores(
        torch.tensor([math.log(0.5)]),
        torch.tensor([2]),
        torch.tensor([[math.log(0.1)], [math.log(0.3)]]),
    )
    assert ll.item() == pytest.approx(-0.346574, abs=1e-6)
    assert mi.item() == pytest.approx(0.458145, abs=1e-6)


# --- Hits@K ------------------------------------------------------------------------------------


def test_hits_at_k_on_a_constructed_case() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # gold best: rank 0
            [0.5, 0.7, 0.2, 0.1, 0.0, 0.0, 0.0],  # one distractor above: rank 1
            [0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0],  # a tie counts against the gold: rank 1
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, -1.0],  # five above: rank 5
        ]
    )
    assert hits_at_k(scores) == {"hits@1": 0.25, "hits@5": 0.75}
    assert hits_at_k(scores, ks=(2, 6)) == {"hits@2": 0.75, "hits@6": 1.0}


def test_hits_candidates_put_the_gold_first_among_distinct_distractors() -> None:
    pool = [f"response {i}" for i in range(150)]
    golds = ["response 0", "response 149", "response 77"]
    cand = hits_candidates(golds, pool, 100, seed=0)
    assert cand.shape == (3, 100)
    for row, gold in zip(cand.tolist(), golds, strict=True):
        assert pool[row[0]] == gold and len(set(row)) == 100 and row[0] not in row[1:]
    assert (cand == hits_candidates(golds, pool, 100, seed=0)).all()
    assert hits_candidates(golds, pool[:150], 500, seed=1).shape == (3, 150)  # K <= pool size


# --- the response filter -------------------------------------------------------------------------


def test_response_filter_counts_what_it_drops() -> None:
    f = ResponseFilter(min_tokens=2, max_tokens=6, blocklist=("ass", "hot pocket"))
    texts = [
        "ok",  # too short (1 token)
        "this class is fun .",  # kept: "ass" only as a whole token
        "you ass !",  # blocked
        "a hot pocket please",  # blocked (phrase)
        "one two three four five six seven",  # too long
        "i am fine , thanks",  # kept
    ]
    kept, counts = f.apply(texts)
    assert kept == [1, 5]
    assert counts == {"input": 6, "kept": 2, "too_short": 1, "too_long": 1, "blocked": 2}


def test_default_blocklist_loads_normalised_phrases() -> None:
    if not DEFAULT_BLOCKLIST.is_file():
        pytest.skip(f"{DEFAULT_BLOCKLIST} not found")
    phrases = load_blocklist(DEFAULT_BLOCKLIST)
    assert len(phrases) > 100 and "2 girls 1 cup" in phrases
    assert ResponseFilter(blocklist=tuple(phrases)).reason("what an asshole .") == "blocked"


# --- augmentation shards -------------------------------------------------------------------------


class FakeTeacher:
    """Deterministic replies and scores; optionally crashes after ``fail_after`` sample calls."""

    def __init__(self, name: str = "fake", fail_after: int | None = None) -> None:
        self.name, self.fail_after, self.calls = name, fail_after, 0

    def sample(self, contexts: Sequence[Sequence[str]], m: int, **kw: int) -> list[list[str]]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        return [
            [f"reply {k} min {kw['min_length']} to {c[-1]}" for k in range(m)] for c in contexts
        ]

    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        return [-float(len(r)) for r in responses], [0.5] * len(responses)


GROUPS = [ContextGroup((f"context {i}",), (f"gold {i}",)) for i in range(10)]
AUG = AugmentConfig(m=2, min_lengths=(1, 3), max_length=8, batch_contexts=3)


def _shard_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_augmentation_writes_m_scored_replies_per_context(tmp_path: Path) -> None:
    assert augment_contexts(FakeTeacher(), GROUPS, tmp_path, AUG, progress=False) == 10
    lines = _shard_lines(shard_path(tmp_path, 0, 1))
    assert lines[0]["header"]["teacher"] == "fake" and lines[0]["header"]["n_contexts"] == 10
    rec = lines[1]
    assert rec["index"] == 0 and rec["context"] == ["context 0"]
    assert rec["gold"] == [{"text": "gold 0", "ll": -6.0, "mi": 0.5}]
    assert [g["min_length"] for g in rec["generated"]] == [1, 3]
    assert rec["generated"][1] == {
        "text": "reply 0 min 3 to context 0",
        "ll": -26.0,
        "mi": 0.5,
        "min_length": 3,
    }
    assert augmentation_status(tmp_path) == (10, 10)


def test_augmentation_resumes_after_a_kill_without_duplicates(tmp_path: Path) -> None:
    # Each chunk of 3 contexts makes 2 sample calls (two min lengths): dying on call 5 leaves 6.
    with pytest.raises(KeyboardInterrupt):
        augment_contexts(FakeTeacher(fail_after=4), GROUPS, tmp_path, AUG, progress=False)
    assert augmentation_status(tmp_path) == (6, 10)
    with shard_path(tmp_path, 0, 1).open("a") as f:
        f.write('{"index": 6, "context": ["cont')  # a torn last line
    assert augment_contexts(FakeTeacher(), GROUPS, tmp_path, AUG, progress=False) == 4
    indices = [r["index"] for r in _shard_lines(shard_path(tmp_path, 0, 1))[1:]]
    assert sorted(indices) == list(range(10))  # each context exactly once
    assert augment_contexts(FakeTeacher(), GROUPS, tmp_path, AUG, progress=False) == 0


def test_augmentation_shards_by_rank_and_refuses_other_settings(tmp_path: Path) -> None:
    for rank in (0, 1):
        augment_contexts(
            FakeTeacher(), GROUPS, tmp_path, AUG, rank=rank, world_size=2, progress=False
        )
    assert [r["index"] for r in _shard_lines(shard_path(tmp_path, 1, 2))[1:]] == [1, 3, 5, 7, 9]
    _, records = read_shards(tmp_path)
    assert sorted(records) == list(range(10))
    with pytest.raises(ValueError, match="different teacher"):
        augment_contexts(FakeTeacher(name="other"), GROUPS, tmp_path, AUG, progress=False)


class FakeRanker:
    """Scores a candidate by its number; "echo" candidates are ruled out (-inf), as
    RetrievalResponder.rank_replies rules out a reply that repeats a turn."""

    bundle_id = "ranker@0"

    def rank_replies(
        self, contexts: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        return [
            np.array([-np.inf if "echo" in t else float(t.split()[1]) for t in row])
            for row in candidates
        ]


class NBestTeacher(FakeTeacher):
    def nbest(
        self, contexts: Sequence[Sequence[str]], n: int, *, max_length: int = 32
    ) -> list[list[str]]:
        # in beam order: an echo, candidate 0 twice (a duplicate), then candidates 1..n-3
        return [
            ["echo " + c[-1], "cand 0 x", *(f"cand {k} x" for k in range(n - 2))][:n]
            for c in contexts
        ]


def test_ranked_augmentation_keeps_the_rankers_m_best_of_the_teachers_nbest(
    tmp_path: Path,
) -> None:
    cfg = replace(AUG, m=2, rank_pool=6)
    assert (
        augment_contexts(NBestTeacher(), GROUPS, tmp_path, cfg, progress=False, ranker=FakeRanker())
        == 10
    )
    lines = _shard_lines(shard_path(tmp_path, 0, 1))
    assert lines[0]["header"]["ranker"] == "ranker@0"
    assert lines[0]["header"]["config"]["rank_pool"] == 6
    rec = lines[1]
    # the two highest-scoring of the n-best, best first; the echo and the duplicate never kept
    assert [g["text"] for g in rec["generated"]] == ["cand 3 x", "cand 2 x"]
    assert [g["min_length"] for g in rec["generated"]] == [0, 0]
    assert rec["generated"][0]["ll"] == -8.0  # the teacher still scores what it kept
    # a sampled augmentation's header is unchanged by the option (old shards stay readable)
    augment_contexts(FakeTeacher(), GROUPS, tmp_path / "sampled", AUG, progress=False)
    assert (
        "rank_pool"
        not in _shard_lines(shard_path(tmp_path / "sampled", 0, 1))[0]["header"]["config"]
    )


def test_ranked_augmentation_caps_how_often_a_reply_is_kept_and_a_resumed_run_counts_on(
    tmp_path: Path,
) -> None:
    # every context gets the same n-best (cand 0..3): with a cap of 1 use, the first context
    # takes the two best, the second the next two, the rest nothing, also when the run is
    # killed after two contexts and resumed (it counts the uses its shards already hold)
    cfg = replace(AUG, m=2, rank_pool=6, rank_max_uses=1, batch_contexts=1)
    four = GROUPS[:4]

    class Dies(NBestTeacher):
        def nbest(
            self, contexts: Sequence[Sequence[str]], n: int, *, max_length: int = 32
        ) -> list[list[str]]:
            self.calls += 1
            if self.calls > 2:
                raise KeyboardInterrupt("killed")
            return super().nbest(contexts, n, max_length=max_length)

    with pytest.raises(KeyboardInterrupt):
        augment_contexts(Dies(), four, tmp_path, cfg, progress=False, ranker=FakeRanker())
    assert augmentation_status(tmp_path) == (2, 4)
    augment_contexts(NBestTeacher(), four, tmp_path, cfg, progress=False, ranker=FakeRanker())
    _, records = read_shards(tmp_path)
    kept = [[g["text"] for g in records[i]["generated"]] for i in range(4)]
    assert kept == [["cand 3 x", "cand 2 x"], ["cand 1 x", "cand 0 x"], [], []]
    assert _shard_lines(shard_path(tmp_path, 0, 1))[0]["header"]["config"]["rank_max_uses"] == 1


def test_ranked_augmentation_refuses_a_teacher_without_an_nbest_or_half_a_setting(
    tmp_path: Path,
) -> None:
    cfg = replace(AUG, rank_pool=4)
    with pytest.raises(ValueError, match="cannot give a beam n-best"):
        augment_contexts(FakeTeacher(), GROUPS, tmp_path, cfg, progress=False, ranker=FakeRanker())
    assert not list(tmp_path.glob("shard-*"))  # refused before a shard was started
    with pytest.raises(ValueError, match="needs both"):
        augment_contexts(NBestTeacher(), GROUPS, tmp_path, cfg, progress=False)
    with pytest.raises(AssertionError, match="at least m"):
        AugmentConfig(m=4, rank_pool=2)


# --- D^G, R^G and batches ----------------------------------------------------------------------


def test_build_retrieval_data_dedups_and_filters_the_augmented_sets() -> None:
    train = [
        DialogueExample(("hi",), "hello ."),
        DialogueExample(("hi",), "hey there ."),
        DialogueExample(("bye",), "see you ."),
        DialogueExample(("how are you ?",), "hello ."),  # same text as another gold
    ]
    records = {
        0: {
            "context": ["hi"],
            "gold": [
                {"text": "hello .", "ll": -1.0, "mi": 0.1},
                {"text": "hey there .", "ll": -2.0, "mi": 0.2},
            ],
            "generated": [
                {"text": "hi , how are you ?", "ll": -1.5, "mi": 0.3},
                {"text": "hello .", "ll": -1.0, "mi": 0.1},  # duplicates a gold
                {
                    "text": "see you .",
                    "ll": -2.5,
                    "mi": 0.4,
                },  # a corpus response of another context
                {"text": "you ass", "ll": -3.0, "mi": 0.0},  # blocked
                {"text": "", "ll": -9.0, "mi": 0.0},  # empty
            ],
        }
    }
    f = ResponseFilter(blocklist=("ass",))
    data = build_retrieval_data(train, records, f, score="mi")
    assert data.contexts == [("hi",), ("bye",), ("how are you ?",)]
    assert data.positives[0] == ["hello .", "hey there .", "hi , how are you ?", "see you ."]
    assert data.teacher_scores == [[0.1, 0.2, 0.3, 0.4], None, None]
    assert data.responses == ["hello .", "hey there .", "see you .", "hi , how are you ?"]
    assert data.sources == ["corpus", "corpus", "corpus", "teacher"]
    assert data.stats["responses_blocked"] == 1 and data.stats["teacher_pairs"] == 2
    plain = build_retrieval_data(train, None, f)
    assert plain.responses == ["hello .", "hey there .", "see you ."] and plain.positives[0] == [
        "hello .",
        "hey there .",
    ]


@pytest.fixture(scope="module")
def toy_tokenizer() -> DialogueTokenizer:
    words = [
        "hi",
        "hello",
        "hey",
        "there",
        "bye",
        "see",
        "you",
        "how",
        "are",
        "fine",
        "thanks",
        "what",
        "time",
        "is",
        "it",
        "good",
        "morning",
        ".",
        ",",
        "?",
        "!",
    ]
    return DialogueTokenizer.train([" ".join(words)] * 5 + words, vocab_size=80, min_frequency=1)


def test_collate_marks_positives_negatives_and_teacher_scores(
    toy_tokenizer: DialogueTokenizer,
) -> None:
    data = RetrievalData(
        contexts=[("hi",), ("bye",), ("how are you ?",)],
        positives=[["hello .", "hey there .", "hi !"], ["see you ."], ["hello ."]],
        teacher_scores=[[-1.0, -2.0, -3.0], None, None],
        responses=["hello .", "hey there .", "see you .", "fine , thanks .", "good morning ."],
        sources=["corpus"] * 5,
        stats={},
    )
    ts = RetrievalTrainSet(
        data, toy_tokenizer, InputConfig(1, 8, 8), positives_per_context=2, random_negatives=5
    )
    batch = ts.collate([0, 1, 2])
    assert batch.response_ids.size(0) == batch.positive.size(1)
    assert not (batch.positive & batch.negative).any()
    assert batch.positive.sum(dim=1).tolist() == [2, 1, 1]  # capped at 2, gold kept
    texts = [toy_tokenizer.decode(r) for r in batch.response_ids.tolist()]
    hello = texts.index("hello .")
    assert batch.positive[0, hello] and batch.positive[2, hello]  # shared text: one column
    assert not batch.negative[
        0, texts.index("hey there .")
    ]  # a positive of row 0 is never its negative
    assert batch.negative[1, hello]
    assert batch.teacher[0, hello].item() == -1.0 and math.isnan(
        batch.teacher[1, texts.index("see you .")].item()
    )
    again = ts.collate([0, 1, 2])
    assert torch.equal(again.response_ids, batch.response_ids)  # deterministic (exact resume)


# --- teachers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_generator(toy_tokenizer: DialogueTokenizer) -> GenerativeResponder:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=toy_tokenizer.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_encoder_layers=1,
        n_decoder_layers=1,
        dropout=0.0,
        max_positions=32,
    )
    from models.decoding import DecodingConfig

    return GenerativeResponder(
        Seq2SeqTransformer(cfg).eval(),
        toy_tokenizer,
        InputConfig(1, 12, 10),
        DecodingConfig(max_length=8),
    )


def test_bundle_teacher_samples_m_replies_and_scores_eq3_eq6(
    random_generator: GenerativeResponder,
) -> None:
    teacher = BundleTeacher(random_generator)
    replies = teacher.sample([["hi"], ["how are you ?"]], 3, min_length=2, max_length=6, seed=1)
    assert [len(r) for r in replies] == [3, 3] and all(
        isinstance(t, str) for r in replies for t in r
    )
    assert replies == teacher.sample(
        [["hi"], ["how are you ?"]], 3, min_length=2, max_length=6, seed=1
    )
    nbest = teacher.nbest([["hi"], ["how are you ?"]], 3, max_length=6)
    assert [len(r) for r in nbest] == [3, 3]
    assert nbest == teacher.nbest([["hi"], ["how are you ?"]], 3, max_length=6)  # a beam search
    ll, mi = teacher.score([["hi"], ["bye"]], ["hello .", "see you ."])
    # By hand from the model: LL = sum log p / (tokens + EOS); MI subtracts log mean_d P(r|d).
    # The teacher scores under bf16 autocast where the CPU has native bf16, so the hand
    # computation does too; one row instead of a padded batch of two rounds differently in bf16.
    tok, model = random_generator.tokenizer, random_generator.model
    bf16 = native_bf16(torch.device("cpu"))
    rel = 2e-3 if bf16 else 1e-5
    tgt_in, tgt_out = tok.decoder_io(tok.encode_responses(["hello ."], 10))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        total, n = sequence_log_likelihood(
            model, tok.pad(tok.encode_contexts([["hi"]], 12)), tgt_in, tgt_out
        )
        dummies = [tok.encode_contexts([["."]], 8)[0], [tok.unk_id], [tok.sep_id]]
        log_p = [
            sequence_log_likelihood(model, tok.pad([d]), tgt_in, tgt_out)[0].item() for d in dummies
        ]
    assert ll[0] == pytest.approx(total.item() / n.item(), rel=rel)
    prior = math.log(sum(math.exp(x) for x in log_p) / 3)
    assert mi[0] == pytest.approx((total.item() - prior) / n.item(), rel=rel)


def _tiny_hf_model(tmp: Path, kind: str) -> Path:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [
        "hello",
        "hi",
        "how",
        "are",
        "you",
        "fine",
        "thanks",
        "what",
        "time",
        "is",
        "it",
        "now",
        "good",
        "morning",
        ".",
        "?",
        ",",
    ]
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    if kind == "causal":
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=len(vocab),
                n_positions=64,
                n_embd=16,
                n_layer=1,
                n_head=2,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            )
        )
    else:
        model = transformers.BartForConditionalGeneration(
            transformers.BartConfig(
                vocab_size=len(vocab),
                d_model=16,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
                max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=2,
                forced_eos_token_id=None,
            )
        )
    out = tmp / kind
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_tiny_local_hf_teacher_samples_and_scores(kind: str, tmp_path: Path) -> None:
    teacher = HFTeacher(_tiny_hf_model(tmp_path, kind))
    assert teacher.seq2seq == (kind == "seq2seq") and teacher.name == f"hf:{kind}"
    replies = teacher.sample(
        [["hello how are you ?"], ["what time is it ?"]], 2, min_length=2, max_length=5, seed=0
    )
    assert [len(r) for r in replies] == [2, 2] and all(t == t.lower() for r in replies for t in r)
    contexts, responses = (
        [["hello how are you ?"], ["what time is it ?"]],
        ["fine thanks .", "good morning"],
    )
    ll, mi = teacher.score(contexts, responses)
    assert len(ll) == len(mi) == 2 and all(math.isfinite(x) and x < 0 for x in ll)
    # Batched scoring (with padding) equals scoring each pair alone.
    alone = [teacher.score([c], [r])[0][0] for c, r in zip(contexts, responses, strict=True)]
    assert ll == pytest.approx(alone, rel=1e-4)
    if kind == "causal":  # by hand: log-probs of the response tokens and EOS after the prompt
        tok, model = teacher.tokenizer, teacher.model
        p = tok("what time is it ?\n")["input_ids"]
        r = [*tok("good morning", add_special_tokens=False)["input_ids"], tok.eos_token_id]
        logits = model(input_ids=torch.tensor([p + r])).logits[0].log_softmax(-1)
        total = sum(logits[len(p) - 1 + j, t].item() for j, t in enumerate(r))
        assert ll[1] == pytest.approx(total / len(r), rel=1e-4)


# --- the tiny pipeline end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_generator(
    dailydialog_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    from training.config import PRESETS
    from training.core.generator import train_mle_generator
    from training.core.run import RunSpec
    from training.pipeline.inputs import ensure_tokenizer, prepare_splits

    base = tmp_path_factory.mktemp("g2r")
    preset = PRESETS["tiny"]
    splits = prepare_splits(preset, dailydialog_dir)
    tokenizer = ensure_tokenizer(preset, splits, base / "runs" / "tokenizer.json", CPU)
    train_mle_generator(
        RunSpec(base / "generator", "generator", base / "runs" / "generator", "tiny", CPU),
        preset=preset,
        tokenizer=tokenizer,
        train_examples=splits.train,
        val_examples=splits.validation[:64],
    )
    return base, base / "generator"


def _cli(argv: list[str]) -> int | None:
    from training.cli import parse_args

    args = parse_args(argv)
    return int(args.run(args))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank-pool", "8"], "--rank-pool and --rank-max-uses need --rank-with"),
        (["--rank-max-uses", "1"], "need --rank-with"),
        (["--rank-with", "nowhere", "--rank-pool", "2", "--m", "4"], "must be at least m=4"),
    ],
)
def test_augment_refuses_half_a_ranked_setting_before_loading_anything(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match=message):
        _cli(["augment", "--teacher", "nowhere", "--runs", str(tmp_path), *extra])


def test_tiny_pipeline_end_to_end(tiny_generator: tuple[Path, Path], dailydialog_dir: Path) -> None:
    base, generator = tiny_generator
    out = base / "artifacts" / "retriever-g2r"
    common = [
        "--preset",
        "tiny",
        "--data",
        str(dailydialog_dir),
        "--device",
        "cpu",
        "--runs",
        str(base / "runs"),
    ]
    assert _cli(["augment", "--teacher", str(generator), *common]) == 0
    n_contexts = get_retriever_preset("tiny").augment.max_contexts
    assert augmentation_status(base / "runs" / "tiny" / "g2r-augment") == (n_contexts, n_contexts)
    assert (
        _cli(
            [
                "train-retriever",
                "--method",
                "g2r-dm",
                "--teacher",
                str(generator),
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )

    manifest = verify_bundle(out)
    assert manifest.kind == "retriever" and manifest.training["method"] == "g2r-dm"
    assert manifest.training["warm_start"] == str(generator) and manifest.training["alpha"] == 0.9
    assert manifest.training["teacher"].startswith("generator@")
    counts = manifest.training["counts"]
    assert counts["augmented_contexts"] == n_contexts and counts["responses_teacher"] > 0
    assert counts["responses"] == counts["responses_kept"]
    assert {"hits@1", "hits@5", "hits_k", "index_recall@1"} <= set(manifest.metrics)
    assert manifest.metrics["hits_k"] == 100.0

    responder = RetrievalResponder.load(out)
    rows = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert responder.index.ntotal == len(rows) == counts["responses"]
    assert {r["source"] for r in rows} == {"corpus", "teacher"}
    replies = responder.respond([["Hello, how are you?"], ["what time is it ?"]], top_k=3)
    assert [len(r) for r in replies] == [3, 3]
    assert all(text in responder.responses for row in replies for text, _ in row)

    assert _cli(["build-index", "--bundle", str(out), "--ef-search", "32"]) == 0
    assert RetrievalResponder.load(out).index.index.hnsw.efSearch == 32


def test_every_command_registers_the_function_that_runs_it() -> None:
    from training.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"augment", "train-retriever", "build-index"} <= set(sub.choices)
    assert [n for n, p in sub.choices.items() if not callable(p.get_default("run"))] == []


@pytest.mark.slow
def test_torchrun_two_gloo_processes_shard_augmentation_and_train_one_retriever(
    tiny_generator: tuple[Path, Path], dailydialog_dir: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    _, generator = tiny_generator
    script = tmp_path / "cli.py"
    script.write_text(
        "import sys\n"
        "from training.cli import parse_args\n"
        "args = parse_args()\n"
        "sys.exit(args.run(args))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = tmp_path / "retriever"
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", "29547", str(script), "train-retriever", "--method", "g2r-dm",
            "--teacher", str(generator), "--preset", "tiny", "--device", "cpu",
            "--data", str(dailydialog_dir), "--runs", str(tmp_path / "runs"), "--out", str(out),
        ],
        cwd=root, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = tmp_path / "runs" / "tiny" / "g2r-augment"
    assert sorted(p.name for p in shards.iterdir()) == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    assert augmentation_status(shards)[0] == get_retriever_preset("tiny").augment.max_contexts
    manifest = verify_bundle(out)
    assert manifest.training["world_size"] == 2
    assert manifest.training["steps"] == get_retriever_preset("tiny").train.max_steps


def test_train_retriever_cli_loads_pairs_at_the_retrievers_context_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`small` generators read 1 turn and its retriever 3: the CLI must load 3-turn pairs for it."""
    import training.pipeline.inputs
    from training.cli import parse_args
    from training.cli.retrieval import _train_retriever

    seen: list[int] = []

    class Loaded(Exception):
        pass

    def fake_prepare_splits(preset: object, data_dir: object) -> None:
        seen.append(preset.inputs.max_context_turns)  # type: ignore[attr-defined]
        raise Loaded

    monkeypatch.setattr(training.pipeline.inputs, "prepare_splits", fake_prepare_splits)
    args = parse_args(
        ["train-retriever", "--preset", "small", "--method", "biencoder", "--out", "x"]
    )
    with pytest.raises(Loaded):
        _train_retriever(args, None)
    from training.config import get_preset

    retriever = get_preset("small").retriever
    assert retriever is not None and seen == [retriever.inputs.max_context_turns] == [3]


def test_a_narrower_biencoder_starts_from_the_generators_embeddings(
    tiny_generator: tuple[Path, Path], dailydialog_dir: Path
) -> None:
    """`--init-from auto` with a bi-encoder narrower than the teacher (small and base): the
    layers cannot be copied, so the token embeddings start from the generator's by PCA."""
    base, generator = tiny_generator
    out = base / "artifacts" / "retriever-narrow"
    argv = [
        "train-retriever", "--method", "biencoder", "--teacher", str(generator),
        "--preset", "tiny", "--data", str(dailydialog_dir), "--device", "cpu",
        "--runs", str(base / "runs-narrow"), "--out", str(out), "--max-steps", "2",
        "--set", "retriever.model.d_model=16", "--set", "retriever.model.d_ff=32",
    ]  # fmt: skip
    assert _cli(argv) == 0
    manifest = verify_bundle(out)
    assert manifest.model_config["biencoder"]["d_model"] == 16
    assert manifest.training["warm_start"] == f"{generator} (token embeddings, PCA to d_model=16)"
