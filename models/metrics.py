"""Response-quality metrics for generated dialogue responses.

Diversity: Dist-n (Li et al. 2016), Ent-n and max-ratio (He & Glass 2020), LF (Li et al. 2020b, as
used by negative distillation, Li et al. 2022). Consistency: KL-n (Csáky et al. 2019) and smoothed
sentence BLEU-n (Chen & Cherry 2014). Plus perplexity and :class:`RollingResponseStats`, the cheap
rolling-window max-ratio / Dist-2 behind the serving gauges.

Every function takes responses that are already normalised (lower-case, whitespace-tokenised): the
tokens of a response are ``text.split()``. Logarithms are natural (nats) throughout.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence

# Chen & Cherry (2014) smoothing 1: a zero n-gram match count becomes epsilon (NLTK's 0.1). It is
# the simplest of their methods, independent of the hypothesis length and of other orders, so a
# short dialogue response with no 4-gram match gets a small but non-zero score that a test can
# check by hand. Other methods (0-7, NLTK numbering) stay available through ``bleu(smoothing=)``.
DEFAULT_BLEU_SMOOTHING = 1
# KL-n pseudo-count for a reference n-gram the generated side never produced: a tenth of a
# singleton, so a miss costs a finite amount that still exceeds having produced it once.
DEFAULT_KL_EPSILON = 0.1
# LF threshold from the negative-distillation paper: a token is low-frequency below 100 occurrences.
DEFAULT_LF_THRESHOLD = 100

NGram = tuple[str, ...]


def _ngrams(tokens: Sequence[str], n: int) -> list[NGram]:
    """Contiguous n-grams of one token sequence (empty when it is shorter than n)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_counts(responses: Iterable[str], n: int) -> Counter[NGram]:
    """Counts of every n-gram over all responses (n-grams never cross a response boundary)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts: Counter[NGram] = Counter()
    for response in responses:
        counts.update(_ngrams(response.split(), n))
    return counts


def _response_key(response: str) -> str:
    """Whole-response identity for max-ratio: its tokens re-joined, so spacing does not matter."""
    return " ".join(response.split())


def distinct_n(responses: Sequence[str], n: int) -> float:
    """Dist-n: distinct n-grams / all n-grams over the responses (Li et al. 2016)."""
    counts = ngram_counts(responses, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def ngram_entropy(responses: Sequence[str], n: int) -> float:
    """Ent-n in nats: -sum_g r(g) log r(g) over the n-gram distribution (He & Glass 2020, eq. 5)."""
    # Eq. 5 writes a bare "log"; we read it as natural, like the DialoGPT/AIM evaluation code of
    # Zhang et al. (2018), who proposed the metric, and consistent with the paper's test-set
    # values (E-3 ~ 11 on ~10^5 trigrams would be implausibly low in bits).
    counts = ngram_counts(responses, n)
    total = sum(counts.values())
    if not total:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values())


def max_ratio(responses: Sequence[str]) -> float:
    """Max-ratio: share of the single most frequent whole response (He & Glass 2020, sec. 3.3)."""
    if not responses:
        return 0.0
    counts = Counter(_response_key(r) for r in responses)
    return max(counts.values()) / len(responses)


def token_counts(texts: Iterable[str]) -> Counter[str]:
    """Token frequencies over texts, the training-side counts that :func:`low_frequency_ratio` needs."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text.split())
    return counts


def low_frequency_ratio(
    responses: Sequence[str],
    train_token_counts: Mapping[str, int],
    threshold: int = DEFAULT_LF_THRESHOLD,
) -> float:
    """LF: share of generated tokens seen < threshold times in training (Li et al. 2020b; ND Table 3)."""
    # The caller chooses the counted side; the training pipeline counts the training *responses*
    # (the target side), which for DailyDialog is every utterance except each dialogue's first.
    # A token absent from the counts has frequency 0, hence counts as low-frequency.
    total = 0
    low = 0
    for response in responses:
        for token in response.split():
            total += 1
            low += train_token_counts.get(token, 0) < threshold
    return low / total if total else 0.0


def kl_divergence(
    generated: Sequence[str],
    references: Sequence[str],
    n: int,
    epsilon: float = DEFAULT_KL_EPSILON,
) -> float:
    """KL-n in nats: KL(P_ref || P_gen) of the n-gram distributions (Csáky et al. 2019)."""
    # Smoothing: a reference n-gram the generated side lacks gets a pseudo-count of `epsilon`, and
    # P_gen is renormalised over the union of both sides' n-grams:
    #   q(g) = (c_gen(g) + epsilon * [c_gen(g) == 0]) / (N_gen + epsilon * |ref \ gen|).
    # So identical (or proportional) distributions give exactly 0 and the value stays finite when
    # the model misses n-grams. Csáky et al.'s released code instead keeps only the shared
    # n-grams, so the numbers are not comparable to theirs.
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    ref = ngram_counts(references, n)
    gen = ngram_counts(generated, n)
    ref_total = sum(ref.values())
    if not ref_total:
        return 0.0
    missing = sum(1 for g in ref if g not in gen)
    gen_total = sum(gen.values()) + epsilon * missing
    kl = 0.0
    for g, c in ref.items():
        p = c / ref_total
        q = gen.get(g, epsilon) / gen_total
        kl += p * math.log(p / q)
    return max(kl, 0.0)  # clamp float round-off below zero; KL >= 0 by Gibbs' inequality


def bleu(
    hypotheses: Sequence[str],
    references: Sequence[str],
    n: int,
    smoothing: int = DEFAULT_BLEU_SMOOTHING,
) -> float:
    """Mean sentence BLEU-n, uniform weights over 1..n, Chen & Cherry (2014) smoothing `smoothing`."""
    assert len(hypotheses) == len(references), (
        f"{len(hypotheses)} hypotheses but {len(references)} references"
    )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= smoothing <= 7:
        raise ValueError(f"smoothing must name a method 0-7, got {smoothing}")
    if not hypotheses:
        return 0.0
    # Imported here: nltk is a `train` extra, and the service imports this module for its gauges.
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    # NLTK semantics kept on purpose (comparable with the papers' tooling): an order the hypothesis
    # is too short to have counts as a zero match and is smoothed, so an exact match shorter than
    # n scores below 1 (e.g. "ok ." vs itself is 0.1 ** (1/3) under BLEU-3 with method 1).
    smoothing_function = getattr(SmoothingFunction(), f"method{smoothing}")
    weights = (1.0 / n,) * n
    total = 0.0
    for hyp, ref in zip(hypotheses, references, strict=True):
        total += float(
            sentence_bleu(
                [ref.split()], hyp.split(), weights, smoothing_function=smoothing_function
            )
        )
    return total / len(hypotheses)


def average_length(responses: Sequence[str]) -> float:
    """Mean response length in tokens (the "length" column of G2R, Kim et al. 2021)."""
    if not responses:
        return 0.0
    return sum(len(r.split()) for r in responses) / len(responses)


def perplexity(total_nll: float, total_tokens: int) -> float:
    """PPL = exp(total NLL / tokens), NLL in nats (He & Glass 2020, Table 4); inf on overflow."""
    if total_tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got {total_tokens}")
    mean_nll = total_nll / total_tokens
    # exp overflows a float past ~709.78; a model that bad has an infinite perplexity for us.
    return math.exp(mean_nll) if mean_nll < 709.0 else math.inf


def has_unseen_word(response: str, train_token_counts: Mapping[str, int]) -> bool:
    """Whether a whitespace token of ``response`` occurs in no training response: a non-word
    ("melyreeong", "laundy") the subword model assembled, or a name it copied."""
    return any(t not in train_token_counts for t in response.split())


def unseen_word_share(responses: Sequence[str], train_token_counts: Mapping[str, int]) -> float:
    """Share of responses with a word no training response contains (:func:`has_unseen_word`)."""
    if not responses:
        return 0.0
    return sum(has_unseen_word(r, train_token_counts) for r in responses) / len(responses)


def response_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    train_token_counts: Mapping[str, int],
) -> dict[str, float]:
    """The negative-distillation table (Li et al. 2022, Table 3) plus Ent-n, max-ratio, length and
    the share of replies with a word unseen in training (:func:`unseen_word_share`)."""
    assert len(hypotheses) == len(references), (
        f"{len(hypotheses)} hypotheses but {len(references)} references"
    )
    return {
        "dist-1": distinct_n(hypotheses, 1),
        "dist-2": distinct_n(hypotheses, 2),
        "dist-3": distinct_n(hypotheses, 3),
        "ent-1": ngram_entropy(hypotheses, 1),
        "ent-2": ngram_entropy(hypotheses, 2),
        "ent-3": ngram_entropy(hypotheses, 3),
        "max-ratio": max_ratio(hypotheses),
        "lf": low_frequency_ratio(hypotheses, train_token_counts),
        "unseen": unseen_word_share(hypotheses, train_token_counts),
        "kl-1": kl_divergence(hypotheses, references, 1),
        "kl-2": kl_divergence(hypotheses, references, 2),
        "bleu-3": bleu(hypotheses, references, 3),
        "bleu-4": bleu(hypotheses, references, 4),
        "avg-len": average_length(hypotheses),
    }


class RollingResponseStats:
    """Max-ratio (He & Glass 2020) and Dist-2 (Li et al. 2016) over the last `window` responses."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._lock = threading.Lock()  # the engine adds while the /metrics scrape reads
        self._recent: deque[tuple[str, list[NGram]]] = deque()
        self._response_counts: Counter[str] = Counter()
        # How many distinct responses occur exactly k times; lets max-ratio's numerator be kept
        # in O(1) when a response leaves the window, instead of a max() over all responses.
        self._count_of_counts: Counter[int] = Counter()
        self._top_count = 0
        self._bigram_counts: Counter[NGram] = Counter()
        self._bigram_total = 0

    def __len__(self) -> int:
        """Responses currently in the window."""
        return len(self._recent)

    def add(self, response: str) -> None:
        """Push one response, evicting the oldest once the window is full; O(response length)."""
        tokens = response.split()
        key = " ".join(tokens)
        bigrams = _ngrams(tokens, 2)
        with self._lock:
            if len(self._recent) == self.window:
                self._evict()
            self._recent.append((key, bigrams))
            count = self._response_counts[key]
            self._response_counts[key] = count + 1
            if count:
                self._count_of_counts[count] -= 1
            self._count_of_counts[count + 1] += 1
            self._top_count = max(self._top_count, count + 1)
            self._bigram_counts.update(bigrams)
            self._bigram_total += len(bigrams)

    def _evict(self) -> None:
        """Drop the oldest response from every counter (caller holds the lock)."""
        key, bigrams = self._recent.popleft()
        count = self._response_counts[key]
        self._count_of_counts[count] -= 1
        if count > 1:
            self._response_counts[key] = count - 1
            self._count_of_counts[count - 1] += 1
        else:
            del self._response_counts[key]
        if count == self._top_count and self._count_of_counts[count] == 0:
            # This response was the only one at the top; it now has count - 1, the new maximum.
            self._top_count = count - 1
        for bigram in bigrams:
            remaining = self._bigram_counts[bigram] - 1
            if remaining:
                self._bigram_counts[bigram] = remaining
            else:
                del self._bigram_counts[bigram]
        self._bigram_total -= len(bigrams)

    def max_ratio(self) -> float:
        """Share of the most frequent response in the window; 0.0 when empty."""
        with self._lock:
            return self._top_count / len(self._recent) if self._recent else 0.0

    def distinct_2(self) -> float:
        """Distinct bigrams / all bigrams in the window; 0.0 when it has no bigram."""
        with self._lock:
            return len(self._bigram_counts) / self._bigram_total if self._bigram_total else 0.0
