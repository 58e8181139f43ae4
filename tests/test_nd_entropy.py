"""Clustered source entropy (ND eq. 4 over clusters, Csáky et al. 2019) and D_N statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from training.cli import main
from training.core.data import DialogueExample, write_jsonl
from training.methods.nd.entropy import (
    EntropyConfig,
    cluster_entropy,
    negative_set_stats,
    pair_source_entropy,
    top_fraction,
)
from training.methods.nd.negative_set import negative_set, source_entropy


def ex(q: str, r: str) -> DialogueExample:
    return DialogueExample(context=(q,), response=r)


TOY = [
    ex("a", "i don't know ."),
    ex("b", "i don't know ."),
    ex("c", "i don't know ."),
    ex("d", "i don't know ."),
    ex("e", "ok ."),
    ex("f", "ok ."),
    ex("e", "ok ."),
    ex("g", "the train leaves at six ."),
]

# Two paraphrases of the generic reply, each to four different queries, and one specific reply to
# two queries. The queries teach the corpus word vectors that "don't" and "do not" are used alike.
BACKGROUND = [
    "i don't like fish .",
    "i do not like fish .",
    "we don't have time .",
    "we do not have time .",
    "they don't know me .",
    "they do not know me .",
    "you don't need it .",
    "you do not need it .",
]
SPECIFIC = "the train leaves at six from platform two ."
PARAPHRASES = [
    *(
        ex(q, "i don't know ." if i % 2 == 0 else "i do not know .")
        for i, q in enumerate(BACKGROUND)
    ),
    ex("when does the train leave ?", SPECIFIC),
    ex("which platform is it ?", SPECIFIC),
]
# Sized for ten pairs: two response clusters, the queries nearly one cluster each; no common-
# component removal (on three distinct responses it removes the very direction that separates
# them; it is meant for corpus-sized sets).
SMALL = EntropyConfig(
    method="avg-embedding", clusters=2, query_clusters=10, radius=0.8, dim=8, min_count=1,
    remove_pc=False,
)  # fmt: skip


def test_identity_is_the_old_source_entropy_bit_for_bit() -> None:
    h = source_entropy(TOY)
    pe = pair_source_entropy(TOY)  # default: identity
    assert pe.entropy.tolist() == [h[e.response] for e in TOY]  # exact equality, not approx
    assert pe.entropy[0] == pytest.approx(math.log(4))
    assert pe.entropy[-1] == 0.0
    # identical strings share an id on both sides
    assert pe.response_cluster.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert pe.query_cluster.tolist() == [0, 1, 2, 3, 4, 5, 4, 6]


def test_cluster_entropy_by_hand() -> None:
    # response cluster 7: queries in clusters 1, 1, 2 -> H = -(2/3 ln 2/3 + 1/3 ln 1/3)
    h = cluster_entropy([1, 1, 2, 3], [7, 7, 7, 8])
    assert h[7] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert h[8] == 0.0


def test_paraphrased_generic_replies_share_a_cluster_and_outrank_a_specific_one() -> None:
    pe = pair_source_entropy(PARAPHRASES, SMALL)
    by_response = {
        e.response: (int(c), float(h))
        for e, c, h in zip(PARAPHRASES, pe.response_cluster, pe.entropy, strict=True)
    }
    dont, do_not, specific = (
        by_response[r] for r in ("i don't know .", "i do not know .", SPECIFIC)
    )
    assert dont[0] == do_not[0] != specific[0]
    assert dont[1] == do_not[1] > specific[1]
    # pooling the paraphrases raises their entropy above what each string gets alone (ln 4)
    identity = source_entropy(PARAPHRASES)
    assert dont[1] > identity["i don't know ."] == pytest.approx(math.log(4))


def test_negative_set_default_is_unchanged() -> None:
    default = negative_set(TOY, fraction=0.5)
    explicit = negative_set(TOY, fraction=0.5, entropy=EntropyConfig(method="identity"))
    assert [e.response for e in default.examples] == ["i don't know ."] * 4
    assert default.examples == explicit.examples
    assert default.threshold == pytest.approx(math.log(4))
    # the pre-clustering selection: sort a seeded shuffle by -H_src of the response, keep the top
    h = source_entropy(TOY)
    keep = top_fraction([h[e.response] for e in TOY], 0.5, seed=3)
    assert negative_set(TOY, 0.5, seed=3).examples == [TOY[i] for i in sorted(keep)]


def test_clustered_negative_set_takes_the_generic_cluster() -> None:
    dn = negative_set(PARAPHRASES, fraction=0.8, entropy=SMALL)
    assert {e.response for e in dn.examples} == {"i don't know .", "i do not know ."}
    assert dn.entropy == SMALL and dn.stats is not None
    assert dn.stats.zero_entropy_share == 0.0


def test_stats_report_ties_and_frequent_responses() -> None:
    h = [math.log(4)] * 4 + [0.6, 0.6, 0.6, 0.0]
    keep = top_fraction(h, 5 / 8, seed=0)  # 5 pairs: the four ln 4 and one of three tied at 0.6
    st = negative_set_stats(TOY, h, keep, fraction=5 / 8, top_n=2)
    assert st.dn_pairs == 5 and st.train_pairs == 8
    assert st.zero_entropy_share == 1 / 8
    assert st.threshold == 0.6
    assert st.tied_at_threshold_share == 3 / 8
    assert st.dn_random_draw_share == 1 / 5  # one of the five was drawn from a three-way tie
    assert st.top_responses == [("i don't know .", 4, math.log(4)), ("ok .", 1, 0.6)]
    assert st.top20_share_dn == 1.0 and st.top20_share_d == 7 / 8
    assert st.max_ratio_dn == 4 / 5 and st.max_ratio_d == 4 / 8
    assert st.mean_len_dn == pytest.approx((4 * 4 + 2) / 5)
    # Dist-2 of D_N: bigrams "i don't", "don't know", "know ." x4 and "ok ." -> 4 distinct / 13
    assert st.distinct2_dn == pytest.approx(4 / 13)


def test_config_rejects_unknown_methods() -> None:
    with pytest.raises(ValueError, match="entropy method"):
        EntropyConfig(method="sent2vec")


def test_negative_set_command_writes_side_by_side_report(tmp_path: Path) -> None:
    pairs = [*PARAPHRASES, *TOY]
    for split in ("train", "validation", "test"):
        write_jsonl(pairs if split == "train" else pairs[:2], tmp_path / f"{split}.jsonl")
    out = tmp_path / "report" / "dn"
    argv = ["negative-set", "--data", str(tmp_path), "--entropy", "identity"]
    argv += ["--entropy", "identity", "--sweep", "2:none,2:0.8:nopc", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["config"]["method"] for r in report["results"]] == ["identity", "identity"]
    stats = report["results"][0]["stats"]
    assert stats["train_pairs"] == report["split_stats"]["train"] == len(set(pairs))
    assert stats["dn_pairs"] == round(stats["train_pairs"] / 2)
    assert [(r["clusters"], r["radius"], r["remove_pc"]) for r in report["sweep"]] == [
        (2, None, True),
        (2, 0.8, False),
    ]
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# D_N") and "Command: `python -m training" in text
    assert "i don't know ." in text
