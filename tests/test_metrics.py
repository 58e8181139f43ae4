"""Response metrics checked against values worked out by hand on toy responses."""

from __future__ import annotations

import math
import random

import pytest

from models.metrics import (
    RollingResponseStats,
    average_length,
    bleu,
    distinct_n,
    kl_divergence,
    low_frequency_ratio,
    max_ratio,
    ngram_counts,
    ngram_entropy,
    perplexity,
    response_metrics,
    token_counts,
)

TOY = ["a b a b", "a b c"]


# --- n-gram counting ---------------------------------------------------------------------------


def test_ngram_counts_do_not_cross_responses() -> None:
    # "a b" + "c d": bigrams (a,b), (c,d); no (b,c) across the boundary
    assert ngram_counts(["a b", "c d"], 2) == {("a", "b"): 1, ("c", "d"): 1}


def test_ngram_counts_rejects_zero_n() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngram_counts(TOY, 0)


# --- Dist-n ------------------------------------------------------------------------------------


def test_distinct_n_unigrams() -> None:
    # tokens a b a b a b c: 3 distinct / 7 total
    assert distinct_n(TOY, 1) == pytest.approx(3 / 7)


def test_distinct_n_bigrams() -> None:
    # bigrams ab ba ab | ab bc: {ab, ba, bc} = 3 distinct / 5 total
    assert distinct_n(TOY, 2) == pytest.approx(3 / 5)


def test_distinct_n_trigrams() -> None:
    # trigrams aba bab | abc: 3 distinct / 3 total
    assert distinct_n(TOY, 3) == pytest.approx(1.0)


def test_distinct_n_empty_input() -> None:
    assert distinct_n([], 2) == 0.0


def test_distinct_n_responses_shorter_than_n() -> None:
    # no response has 3 tokens, so there is no trigram at all
    assert distinct_n(["a b", "c", ""], 3) == 0.0


# --- Ent-n -------------------------------------------------------------------------------------


def test_ngram_entropy_unigrams_in_nats() -> None:
    # "a b", "a c": r(a) = 1/2, r(b) = r(c) = 1/4
    # H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1/2 ln 2 + ln 2 = 1.5 ln 2
    assert ngram_entropy(["a b", "a c"], 1) == pytest.approx(1.5 * math.log(2))


def test_ngram_entropy_bigrams() -> None:
    # bigrams ab ba ab ab bc: r(ab) = 3/5, r(ba) = r(bc) = 1/5
    # H = -(3/5 ln 3/5 + 2/5 ln 1/5) = 0.306495 + 0.643775 = 0.950271
    assert ngram_entropy(TOY, 2) == pytest.approx(0.950271, abs=1e-6)


def test_ngram_entropy_single_ngram_is_zero() -> None:
    # one distinct unigram: r = 1, -1 ln 1 = 0
    assert ngram_entropy(["a a a"], 1) == 0.0


def test_ngram_entropy_empty_input() -> None:
    assert ngram_entropy([], 1) == 0.0
    assert ngram_entropy(["a b"], 3) == 0.0


# --- max-ratio ---------------------------------------------------------------------------------


def test_max_ratio_most_frequent_share() -> None:
    # "i don't know" 3 times out of 5 responses
    responses = ["i don't know", "yes", "i don't know", "no", "i  don't know"]
    assert max_ratio(responses) == pytest.approx(3 / 5)


def test_max_ratio_all_distinct() -> None:
    # every response once: 1 / 4
    assert max_ratio(["a", "b", "c", "d"]) == pytest.approx(0.25)


def test_max_ratio_empty_input() -> None:
    assert max_ratio([]) == 0.0


# --- LF ----------------------------------------------------------------------------------------


def test_low_frequency_ratio_counts_tokens_below_threshold() -> None:
    counts = {"the": 500, "cat": 100, "zebra": 3}
    # the (500) no, cat (100, not < 100) no, zebra (3) yes, unseen (0) yes: 2 / 4
    assert low_frequency_ratio(["the cat zebra unseen"], counts) == pytest.approx(0.5)


def test_low_frequency_ratio_custom_threshold() -> None:
    counts = {"the": 500, "cat": 100, "zebra": 3}
    # threshold 101: cat (100) now low too: 3 / 4
    assert low_frequency_ratio(["the cat zebra unseen"], counts, threshold=101) == pytest.approx(
        0.75
    )


def test_low_frequency_ratio_empty_input() -> None:
    assert low_frequency_ratio([], {"a": 1}) == 0.0
    assert low_frequency_ratio([""], {"a": 1}) == 0.0


def test_token_counts_over_texts() -> None:
    assert token_counts(["a b", "b  c b"]) == {"a": 1, "b": 3, "c": 1}


# --- KL-n --------------------------------------------------------------------------------------


def test_kl_divergence_identical_distributions_is_zero() -> None:
    refs = ["a b c", "a b"]
    assert kl_divergence(refs, refs, 1) == 0.0
    assert kl_divergence(refs, refs, 2) == 0.0
    # proportional counts (every response twice) are the same distribution
    assert kl_divergence(refs * 2, refs, 1) == 0.0


def test_kl_divergence_smooths_missing_ngram() -> None:
    # P_ref: a 1/2, b 1/2. Generated "a a": c(a) = 2, b missing -> epsilon 0.1
    # q(a) = 2 / 2.1, q(b) = 0.1 / 2.1
    # KL = 1/2 ln(0.5 * 2.1 / 2) + 1/2 ln(0.5 * 2.1 / 0.1) = 1/2 ln(0.525 * 10.5) = 1/2 ln 5.5125
    expected = 0.5 * math.log(5.5125)
    assert kl_divergence(["a a"], ["a b"], 1) == pytest.approx(expected)
    assert expected == pytest.approx(0.853510, abs=1e-6)


def test_kl_divergence_generated_only_ngrams_dilute_q() -> None:
    # P_ref: a 1. Generated "a z": q(a) = 1/2 (z takes the rest). KL = 1 * ln(1 / (1/2)) = ln 2
    assert kl_divergence(["a z"], ["a"], 1) == pytest.approx(math.log(2))


def test_kl_divergence_positive_for_different_distributions() -> None:
    assert kl_divergence(["a a b"], ["a b b"], 1) > 0.0
    assert kl_divergence(["x y"], ["a b"], 2) > 0.0


def test_kl_divergence_empty_generated_is_uniform_over_references() -> None:
    # q is epsilon-only, uniform over the 2 reference unigrams: KL = ln 2 - H(p) = ln 2 - ln 2 = 0
    assert kl_divergence([], ["a b"], 1) == pytest.approx(0.0)
    # p = (2/3, 1/3), q = (1/2, 1/2): KL = 2/3 ln(4/3) + 1/3 ln(2/3) = 0.056633
    assert kl_divergence([""], ["a a b"], 1) == pytest.approx(0.056633, abs=1e-6)


def test_kl_divergence_empty_references_is_zero() -> None:
    assert kl_divergence(["a b"], [], 1) == 0.0


def test_kl_divergence_rejects_non_positive_epsilon() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        kl_divergence(["a"], ["b"], 1, epsilon=0.0)


# --- BLEU --------------------------------------------------------------------------------------


def test_bleu_exact_match_is_one() -> None:
    sentence = "how are you doing today ?"
    assert bleu([sentence], [sentence], 4) == pytest.approx(1.0)
    assert bleu([sentence, "i am fine"], [sentence, "i am fine"], 3) == pytest.approx(1.0)


def test_bleu_brevity_penalty() -> None:
    # hyp 3 tokens, ref 4: p1 = 3/3, p2 = 2/2, BP = exp(1 - 4/3) = exp(-1/3) = 0.716531
    assert bleu(["the cat sat"], ["the cat sat down"], 2) == pytest.approx(math.exp(-1 / 3))


def test_bleu_smoothed_zero_trigram_match() -> None:
    # p1 = 2/3 (the, cat), p2 = 1/2 (the cat), p3 = 0/1 -> method 1: 0.1/1; BP = 1
    # BLEU-3 = (2/3 * 1/2 * 1/10) ** (1/3) = (1/30) ** (1/3) = 0.321830
    assert bleu(["the cat ran"], ["the cat sat"], 3) == pytest.approx((1 / 30) ** (1 / 3))


def test_bleu_averages_sentences() -> None:
    # (1.0 + (1/30) ** (1/3)) / 2
    got = bleu(["a b c", "the cat ran"], ["a b c", "the cat sat"], 3)
    assert got == pytest.approx((1.0 + (1 / 30) ** (1 / 3)) / 2)


def test_bleu_unsmoothed_zero_match_is_zero() -> None:
    # method 0: a zero trigram precision zeroes the geometric mean (and NLTK says so)
    with pytest.warns(UserWarning, match="0 counts of 3-gram overlaps"):
        assert bleu(["the cat ran"], ["the cat sat"], 3, smoothing=0) == pytest.approx(
            0.0, abs=1e-12
        )


def test_bleu_short_exact_match_keeps_nltk_semantics() -> None:
    # "ok ." has no trigram: p3 = 0/1 smoothed to 0.1, BLEU-3 = 0.1 ** (1/3) = 0.464159
    assert bleu(["ok ."], ["ok ."], 3) == pytest.approx(0.1 ** (1 / 3))


def test_bleu_empty_hypothesis_is_zero() -> None:
    assert bleu([""], ["a b c"], 3) == 0.0
    assert bleu([], [], 4) == 0.0


def test_bleu_length_mismatch_raises() -> None:
    with pytest.raises(AssertionError, match="2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"], 2)


def test_bleu_rejects_unknown_smoothing() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        bleu(["a"], ["a"], 1, smoothing=8)


# --- length and perplexity ---------------------------------------------------------------------


def test_average_length_in_tokens() -> None:
    # (3 + 1 + 0) / 3
    assert average_length(["a b c", "a", ""]) == pytest.approx(4 / 3)


def test_average_length_empty_input() -> None:
    assert average_length([]) == 0.0


def test_perplexity_exp_of_mean_nll() -> None:
    # 3 tokens each with NLL ln 4: exp(3 ln 4 / 3) = 4
    assert perplexity(3 * math.log(4), 3) == pytest.approx(4.0)


def test_perplexity_zero_tokens_raises() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        perplexity(1.0, 0)


def test_perplexity_overflow_is_inf() -> None:
    assert perplexity(1e6, 1) == math.inf


# --- response_metrics --------------------------------------------------------------------------


def test_response_metrics_returns_exact_keys_and_values() -> None:
    hyps = ["i do n't know", "i do n't know", "sure , why not"]
    refs = ["i have no idea", "i do n't know", "why not ?"]
    train = token_counts(["i do n't know"] * 100 + ["sure"])
    got = response_metrics(hyps, refs, train)
    assert list(got) == [
        "dist-1", "dist-2", "dist-3", "ent-1", "ent-2", "ent-3", "max-ratio", "lf", "unseen",
        "kl-1", "kl-2", "bleu-3", "bleu-4", "avg-len",
    ]  # fmt: skip
    # 12 tokens, distinct: i do n't know sure , why not = 8
    assert got["dist-1"] == pytest.approx(8 / 12)
    # "i do n't know" twice out of 3
    assert got["max-ratio"] == pytest.approx(2 / 3)
    # train counts: i/do/n't/know 100 each, sure 1; low: sure , why not = 4 of 12 tokens
    assert got["lf"] == pytest.approx(4 / 12)
    # ",", "why", "not" never occur in the training responses: 1 of the 3 replies
    assert got["unseen"] == pytest.approx(1 / 3)
    assert got["avg-len"] == pytest.approx(4.0)
    assert got["kl-2"] == pytest.approx(kl_divergence(hyps, refs, 2))
    assert got["bleu-4"] == pytest.approx(bleu(hyps, refs, 4))
    assert all(isinstance(v, float) for v in got.values())


def test_response_metrics_length_mismatch_raises() -> None:
    with pytest.raises(AssertionError, match="1 hypotheses but 2 references"):
        response_metrics(["a"], ["a", "b"], {})


# --- RollingResponseStats ----------------------------------------------------------------------


def test_rolling_stats_empty_window() -> None:
    stats = RollingResponseStats(window=3)
    assert stats.max_ratio() == 0.0
    assert stats.distinct_2() == 0.0
    assert len(stats) == 0


def test_rolling_stats_evicts_oldest() -> None:
    stats = RollingResponseStats(window=2)
    for response in ["a b", "a b", "c d e"]:
        stats.add(response)
    # window now ["a b", "c d e"]: max-ratio 1/2; bigrams ab cd de all distinct: 3 / 3
    assert len(stats) == 2
    assert stats.max_ratio() == pytest.approx(0.5)
    assert stats.distinct_2() == pytest.approx(1.0)
    stats.add("c d e")
    # window ["c d e", "c d e"]: max-ratio 2/2; bigrams cd de cd de: 2 / 4
    assert stats.max_ratio() == pytest.approx(1.0)
    assert stats.distinct_2() == pytest.approx(0.5)


def test_rolling_stats_rejects_empty_window() -> None:
    with pytest.raises(ValueError, match="window"):
        RollingResponseStats(window=0)


@pytest.mark.parametrize("window", [1, 4, 7])
def test_rolling_stats_matches_recomputation_on_random_sequence(window: int) -> None:
    rng = random.Random(window)
    # a tiny vocabulary and short responses make repeated responses and bigrams common
    pool = [" ".join(rng.choices("abc", k=rng.randint(0, 3))) for _ in range(6)]
    stats = RollingResponseStats(window)
    history: list[str] = []
    for _ in range(300):
        response = rng.choice(pool)
        stats.add(response)
        history.append(response)
        recent = history[-window:]
        assert stats.max_ratio() == pytest.approx(max_ratio(recent))
        assert stats.distinct_2() == pytest.approx(distinct_n(recent, 2))
    assert len(stats) == window


def test_unseen_word_share_counts_replies_with_a_word_no_training_response_has() -> None:
    from models.metrics import unseen_word_share

    counts = {"i": 3, "am": 2, "fine": 1, ".": 5}
    replies = ["i am fine .", "i am melyreeong .", "fine .", "laundy"]
    assert unseen_word_share(replies, counts) == 0.5
    assert unseen_word_share([], counts) == 0.0
    assert response_metrics(replies, replies, counts)["unseen"] == 0.5
