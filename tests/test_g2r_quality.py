"""G2R teacher-reply quality: the filter's criteria and counts in D^G / R^G, the served teacher
share, and the lexical baselines (TF-IDF and BM25 by hand, Hits@1/K on a hand-made set)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from benchmarks.lexical import (
    BM25Retriever,
    TfidfRetriever,
    context_text,
    echo_rate,
    lexical_hits,
    lexical_tokens,
    parse_methods,
)
from benchmarks.retrieval import served_teacher_share
from training.cli.retrieval import _teacher_filter
from training.core.data import DialogueExample
from training.methods.g2r.data import ResponseFilter, build_retrieval_data
from training.methods.g2r.job import TeacherReplyFilter

GOOD = "sure , i can help you with that ."
REPEATED = "i am fine , i am fine thank you ."  # the word trigram "i am fine" twice
LOW = "that sounds lovely to me ."  # fine text, but the teacher scores it far below the rest

TRAIN = [
    DialogueExample(("can you help me ?",), "of course ."),
    DialogueExample(("how are you ?",), "good , thanks ."),
]


def _records() -> dict[int, dict[str, object]]:
    return {
        0: {
            "context": ["can you help me ?"],
            "gold": [{"text": "of course .", "ll": -3.0, "mi": 0.0}],
            "generated": [
                {"text": GOOD, "ll": -2.0, "mi": 0.0},
                {"text": REPEATED, "ll": -2.1, "mi": 0.0},
                {"text": LOW, "ll": -9.0, "mi": 0.0},
            ],
        }
    }


def test_text_criteria_each_name_their_reason() -> None:
    f = TeacherReplyFilter()
    assert f.text_reason(GOOD) is None
    assert f.text_reason("ok .") == "too_short"
    assert f.text_reason(" ".join(["word"] * 20 + ["other"] * 21) + " .") == "too_long"
    assert f.text_reason("we can shove off by") == "no_final_punct"  # cut off mid-sentence
    assert f.text_reason('he said " no way . "') is None  # closing quote after the full stop
    assert f.text_reason("not sure . you were on on .") == "adjacent_repeat"
    assert f.text_reason("oh , oh , madam .") is None  # punctuation and one-word repeats are human
    assert f.text_reason(REPEATED) == "repeated_ngram"
    assert f.text_reason("no , no way , no chance , no time , no .") == "word_repeats"
    assert f.text_reason(GOOD, generic=frozenset({GOOD})) == "generic"
    assert TeacherReplyFilter(generic_top_n=1).generic_responses(["a .", "b .", "b ."]) == {"b ."}


def test_filter_drops_repeated_and_low_score_replies_and_counts_them() -> None:
    # Floor: the 0.25 quantile of the teacher's scores (-9, -2.1, -2.0) = -9 + 0.5 * 6.9 = -5.55.
    f = TeacherReplyFilter()
    verdict = f.apply(list(_records().values()))
    assert verdict.score_floor == pytest.approx(-5.55)
    assert verdict.accepted == {(("can you help me ?",), GOOD)}
    data = build_retrieval_data(TRAIN, _records(), ResponseFilter(), teacher_filter=f)
    assert data.positives[0] == ["of course .", GOOD]
    assert data.responses == ["of course .", "good , thanks .", GOOD]
    assert data.sources == ["corpus", "corpus", "teacher"]
    s = data.stats
    assert (s["teacher_filter_input"], s["teacher_filter_kept"]) == (3, 1)
    assert (s["teacher_filter_repeated_ngram"], s["teacher_filter_low_score"]) == (1, 1)
    assert (s["teacher_filter_pairs_input"], s["teacher_filter_pairs_kept"]) == (3, 1)
    assert s["teacher_filter_score_floor"] == pytest.approx(-5.55)
    assert s["teacher_pairs"] == 1 and s["responses_teacher"] == 1
    # An absolute floor or one relative to the gold scores works the same way.
    absolute = TeacherReplyFilter(min_score=-2.05, min_score_teacher_quantile=None)
    assert absolute.apply(list(_records().values())).accepted == {(("can you help me ?",), GOOD)}
    gold = TeacherReplyFilter(min_score_teacher_quantile=None, min_score_gold_quantile=0.5)
    assert gold.score_floor(list(_records().values())) == pytest.approx(-3.0)


def test_no_filter_keeps_the_old_behaviour() -> None:
    data = build_retrieval_data(TRAIN, _records(), ResponseFilter())
    assert data.positives[0] == ["of course .", GOOD, REPEATED, LOW]
    assert not any(k.startswith("teacher_filter") for k in data.stats)


def test_the_score_bar_is_per_pair() -> None:
    # The same reply under two contexts: a positive only where its score passes, in R^G once.
    records = {
        0: {
            "context": ["can you help me ?"],
            "gold": [],
            "generated": [{"text": GOOD, "ll": -1.0, "mi": 0.0}],
        },
        1: {
            "context": ["how are you ?"],
            "gold": [],
            "generated": [{"text": GOOD, "ll": -8.0, "mi": 0.0}],
        },
    }
    f = TeacherReplyFilter(min_score=-4.0, min_score_teacher_quantile=None)
    data = build_retrieval_data(TRAIN, records, ResponseFilter(), teacher_filter=f)
    assert data.positives == [["of course .", GOOD], ["good , thanks ."]]
    assert data.sources.count("teacher") == 1
    assert (data.stats["teacher_filter_kept"], data.stats["teacher_filter_pairs_kept"]) == (1, 1)


def test_cli_teacher_filter_choices() -> None:
    def ns(choice: str, q: float | None = None) -> argparse.Namespace:
        return argparse.Namespace(teacher_filter=choice, teacher_min_score_quantile=q)

    class NoFilterPreset:
        pass

    assert _teacher_filter(ns("preset"), NoFilterPreset()) is None
    assert _teacher_filter(ns("none"), NoFilterPreset()) is None
    assert _teacher_filter(ns("default"), NoFilterPreset()) == TeacherReplyFilter()
    tuned = _teacher_filter(ns("default", 0.5), NoFilterPreset())
    assert tuned.min_score_teacher_quantile == 0.5
    with pytest.raises(SystemExit):
        _teacher_filter(ns("none", 0.5), NoFilterPreset())


def test_served_teacher_share_by_hand() -> None:
    sources = ["corpus", "corpus", "corpus", "teacher"]
    s = served_teacher_share(sources, [3, 3, 0, 1])
    assert s["response_set_teacher_share"] == pytest.approx(0.25)
    assert s["served_teacher_share"] == pytest.approx(0.5)
    assert (s["distinct_served"], s["distinct_served_teacher"]) == (3.0, 1.0)
    assert s["distinct_served_teacher_share"] == pytest.approx(1 / 3)


# --- lexical baselines ---------------------------------------------------------------------------


def test_lexical_tokens_and_contexts() -> None:
    assert lexical_tokens("I don't know , 2 cats !") == ["i", "don't", "know", "2", "cats"]
    assert context_text(("a", "b", "c", "d"), 3) == "b c d"
    assert parse_methods("tfidf, bm25") == ["tfidf", "bm25"]
    with pytest.raises(ValueError, match="unknown"):
        parse_methods("tfidf,dpr")


def test_bm25_matches_a_hand_computation() -> None:
    # N = 3, avgdl = (3 + 2 + 4) / 3 = 3, k1 = 1.5, b = 0.75; df(cat) = df(dog) = 2.
    # idf(df = 2) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln 1.6.
    # Query "cat dog":
    #   d1 "the cat sat"        cat tf 1, |d| 3: 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 3/3))
    #                                          = 2.5 / 2.5 = 1                 -> ln 1.6 * 1
    #   d2 "the dog"            dog tf 1, |d| 2: 2.5 / (1 + 1.5 * 0.75) = 2.5 / 2.125
    #   d3 "cat cat dog bird"   cat tf 2, |d| 4: 2 * 2.5 / (2 + 1.875) = 5 / 3.875
    #                           dog tf 1:        2.5 / (1 + 1.875) = 2.5 / 2.875
    docs = ["the cat sat", "the dog", "cat cat dog bird"]
    bm25 = BM25Retriever(docs)
    idf = math.log(1.6)
    expected = [idf, idf * 2.5 / 2.125, idf * (5 / 3.875 + 2.5 / 2.875)]
    assert expected == pytest.approx([0.470004, 0.552946, 1.015156], abs=1e-6)
    assert bm25.scores(["cat dog"], docs)[0] == pytest.approx(expected)
    assert bm25.idf[bm25.vectorizer.vocabulary_["bird"]] == pytest.approx(math.log(1 + 2.5 / 1.5))
    assert bm25.top1(["cat dog", "the sat", "unseen words"]).tolist() == [2, 0, 0]


def test_tfidf_is_the_cosine_of_sklearn_vectors() -> None:
    docs = ["the cat sat", "the dog", "cat cat dog bird"]
    tfidf = TfidfRetriever(docs)
    scores = tfidf.scores(["cat dog"], docs)[0]
    vectors = tfidf.vectorizer.transform(["cat dog", *docs]).toarray()
    q, d = vectors[0], vectors[1:]
    cosine = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
    assert scores == pytest.approx(cosine)
    assert int(np.argmax(scores)) == 2


@pytest.mark.parametrize("retriever_cls", [TfidfRetriever, BM25Retriever])
def test_lexical_hits_is_one_when_the_answer_shares_the_context_words(retriever_cls: type) -> None:
    examples = [
        DialogueExample(("older turn", "do you like apples ?"), "yes , apples are sweet ."),
        DialogueExample(("where is the station ?",), "the station is near the bank ."),
        DialogueExample(("what about football tonight ?",), "football tonight sounds great ."),
        DialogueExample(("is your guitar new ?",), "my guitar is old ."),
        DialogueExample(("the weather is rainy",), "rainy weather again ."),
        DialogueExample(("coffee or tea ?",), "tea , please ."),
    ]
    retriever = retriever_cls([e.response for e in examples])
    hits = lexical_hits(retriever, examples, turns=1)
    assert hits["hits@1"] == 1.0 and hits["hits@5"] == 1.0
    assert hits["hits_k"] == 6.0  # K = min(100, the split's distinct responses)
    top1 = retriever.top1([context_text(e.context, 3) for e in examples])
    assert top1.tolist() == list(range(len(examples)))
    assert echo_rate([e.response for e in examples], examples) == 0.0
    assert echo_rate(["do you like apples ?"], examples[:1]) == 1.0
