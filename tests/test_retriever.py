"""Response index and retrieval bundles: HNSW vs exact recall, id alignment, refusing bad bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import BundleError, read_manifest, verify_bundle, write_bundle
from models.generator import InputConfig
from models.retriever import (
    IndexConfig,
    ResponseIndex,
    RetrievalResponder,
    build_response_index,
    embed_responses,
    exact_search,
    read_responses,
)
from models.tokenizer import DialogueTokenizer
from training.methods.g2r.index import index_recall, rebuild_index

WORDS = [
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
    "night",
    "see",
    "later",
    "bye",
    "yes",
    "no",
]
RESPONSES = [
    "i am fine , thanks .",
    "it is ten o'clock .",
    "good morning to you !",
    "see you later .",
    "yes , of course .",
    "no , thanks .",
    "what time is it now ?",
    "good night .",
]
INPUTS = InputConfig(max_context_turns=2, max_source_len=16, max_target_len=12)


def _seeded_vectors(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("equal_norm", [True, False])
def test_hnsw_recall_at_1_matches_exact_search_and_survives_a_permutation(
    equal_norm: bool,
) -> None:
    database, queries = _seeded_vectors(4000, 16, 0), _seeded_vectors(200, 16, 1)
    config = IndexConfig(equal_norm=equal_norm)
    index = ResponseIndex.build(np.array_split(database, 7), 16, config, progress=False)
    assert index.ntotal == 4000 and index.dim == 16 and index.config.ef_search == 256
    assert index_recall(index, database, queries, k=1) >= 0.98

    perm = np.random.default_rng(2).permutation(len(database))
    permuted = ResponseIndex.build([database[perm]], 16, config, progress=False)
    assert index_recall(permuted, database[perm], queries, k=1) >= 0.98
    # Same neighbours, renamed by the permutation: exact ids map back through it.
    _, exact = exact_search(database, queries, 1)
    _, exact_perm = exact_search(database[perm], queries, 1)
    np.testing.assert_array_equal(perm[exact_perm[:, 0]], exact[:, 0])
    _, approx_perm = permuted.search(queries, 1)
    assert np.mean(perm[approx_perm[:, 0]] == exact[:, 0]) >= 0.98


def test_equal_norm_index_returns_exact_inner_products_and_the_raw_vectors() -> None:
    database, queries = _seeded_vectors(500, 8, 4), _seeded_vectors(20, 8, 5)
    database *= np.linspace(0.5, 2.0, 500, dtype=np.float32)[:, None]  # norms differ a lot
    index = ResponseIndex.build([database], 8, IndexConfig(equal_norm=True), progress=False)
    assert index.index.d == 9
    np.testing.assert_allclose(index.vectors(), database, rtol=1e-6)
    scores, ids = index.search(queries, 5)
    np.testing.assert_allclose(
        scores, np.take_along_axis(queries @ database.T, ids, axis=1), rtol=1e-4, atol=1e-4
    )
    back = ResponseIndex.from_bytes(index.to_bytes())
    assert back.max_norm == pytest.approx(float(np.linalg.norm(database, axis=1).max()), rel=1e-5)
    with pytest.raises(AssertionError, match="exceeds the index's M"):
        back.add(np.full((1, 8), 100.0, dtype=np.float32))


def test_exact_search_returns_inner_product_scores_by_hand() -> None:
    database = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    scores, ids = exact_search(database, np.array([[1.0, 1.0]], dtype=np.float32), 2, use_gpu=False)
    # <q, x_i> = 1, 2, 2: ids 1 and 2 tie at 2.0, id 0 scores 1.0
    assert sorted(ids[0].tolist()) == [1, 2] and scores[0].tolist() == [2.0, 2.0]


def test_index_round_trips_through_bytes_and_keeps_ef_search() -> None:
    x = _seeded_vectors(300, 8, 3)
    index = ResponseIndex.build([x], 8, IndexConfig(ef_search=64), progress=False)
    back = ResponseIndex.from_bytes(index.to_bytes(), IndexConfig(ef_search=32))
    assert back.ntotal == 300 and back.dim == 8 and back.index.hnsw.efSearch == 32
    np.testing.assert_array_equal(back.search(x[:5], 3)[1], index.search(x[:5], 3)[1])


@pytest.fixture(scope="module")
def tokenizer() -> DialogueTokenizer:
    texts = [
        *RESPONSES,
        *WORDS,
        "how are you ?",
        "what time is it ?",
        "hello , how are you today ?",
    ]
    return DialogueTokenizer.train(texts * 3, vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def responder(tokenizer: DialogueTokenizer) -> RetrievalResponder:
    torch.manual_seed(0)
    cfg = BiEncoderConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=1,
        dropout=0.0,
        max_positions=32,
        embed_dim=8,
    )
    model = BiEncoder(cfg).eval()
    index = build_response_index(
        model, tokenizer, RESPONSES, INPUTS, IndexConfig(ef_search=16), progress=False
    )
    sources = ["corpus"] * 6 + ["teacher"] * 2
    return RetrievalResponder(model, tokenizer, INPUTS, index, RESPONSES, sources)


@pytest.fixture
def bundle(responder: RetrievalResponder, tmp_path: Path) -> Path:
    responder.save(
        tmp_path / "retriever", name="retriever-test", training={"method": "test"}, metrics={}
    )
    return tmp_path / "retriever"


def test_bundle_ids_align_with_responses_jsonl(bundle: Path) -> None:
    rows = [json.loads(line) for line in (bundle / "responses.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(RESPONSES)))
    assert [r["text"] for r in rows] == RESPONSES
    assert [r["source"] for r in rows] == ["corpus"] * 6 + ["teacher"] * 2
    loaded = RetrievalResponder.load(bundle)
    # Index vector i is the embedding of row i, and searching with it finds row i first.
    own = np.concatenate(
        list(embed_responses(loaded.model, loaded.tokenizer, RESPONSES, loaded.inputs))
    )
    np.testing.assert_allclose(loaded.index.vectors(), own, rtol=1e-5, atol=1e-5)
    _, ids = exact_search(own, own, 1)
    _, approx = loaded.index.search(own, 1)
    np.testing.assert_array_equal(approx[:, 0], ids[:, 0])


def test_load_and_respond_returns_top_k_texts_with_scores(bundle: Path) -> None:
    loaded = RetrievalResponder.load(bundle)
    assert loaded.bundle_id.startswith("retriever-test@") and loaded.index.config.ef_search == 16
    out = loaded.respond([["Hello, how are you?"], ["what time is it ?", "it's ten ."]], top_k=3)
    assert len(out) == 2 and all(len(row) == 3 for row in out)
    for row in out:
        assert all(text in RESPONSES and isinstance(score, float) for text, score in row)
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    # The score is the dot product of the context and response embeddings.
    ctx = loaded.embed(loaded.encode_contexts([["Hello, how are you?"]]))
    text, score = out[0][0]
    emb = loaded.index.vectors()[RESPONSES.index(text)]
    assert score == pytest.approx(float(ctx[0] @ emb), rel=1e-4)
    assert loaded.respond([]) == []
    assert len(loaded.respond([["hi"]], top_k=100)[0]) == len(RESPONSES)


def test_a_loaded_retriever_embeds_one_context_through_a_trace_that_follows_its_module(
    bundle: Path,
) -> None:
    loaded = RetrievalResponder.load(bundle, int8=False)  # the float32 trace (int8: below)
    assert loaded._traced is not None  # on for a CPU float32 load
    contexts = [["Hello, how are you?"], ["what time is it ?", "it's ten ."]]
    one = loaded.encode_contexts(contexts[:1])
    both = loaded.encode_contexts(contexts)  # the first row right-padded
    assert loaded._context_encoder_for(one) is loaded._traced
    assert loaded._context_encoder_for(both) is not loaded._traced  # two rows, padding
    assert loaded._context_encoder_for(both[:1]) is not loaded._traced  # a padded row
    with torch.inference_mode():
        module = loaded.model.encode_contexts(one).numpy()
    np.testing.assert_allclose(loaded.embed(one), module, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.embed(both)[:1], module, rtol=1e-4, atol=1e-5)
    # it shares the module's parameters: weights loaded in place are what it computes with
    state = {k: v * 1.5 for k, v in loaded.model.state_dict().items()}
    loaded.model.load_state_dict(state)
    with torch.inference_mode():
        moved = loaded.model.encode_contexts(one).numpy()
    assert not np.allclose(moved, module)
    np.testing.assert_allclose(loaded.embed(one), moved, rtol=1e-5, atol=1e-6)
    # training mode or another dtype: the module serves
    loaded.model.train()
    assert loaded._context_encoder_for(one) is not loaded._traced
    loaded.model.eval().double()
    assert loaded._context_encoder_for(one) is not loaded._traced
    # and a responder built in training (not loaded) has no trace
    direct = RetrievalResponder(
        loaded.model.float(), loaded.tokenizer, loaded.inputs, loaded.index, RESPONSES
    )
    assert direct._context_encoder_for(one) is not direct._traced


def test_a_cpu_load_encodes_contexts_in_int8_one_by_one_close_to_float32(bundle: Path) -> None:
    loaded = RetrievalResponder.load(bundle)
    assert loaded.int8 and loaded._traced is not None  # on by default for a CPU float32 load
    contexts = [["Hello, how are you?"], ["what time is it ?", "it's ten ."], ["hi"]]
    both = loaded.encode_contexts(contexts)  # rows right-padded to the longest
    with torch.inference_mode():
        float32 = loaded.model.encode_contexts(both).numpy()  # the model itself stays float32
    int8 = loaded.embed(both)
    cosine = (
        (int8 * float32).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(float32, axis=1)
    )
    assert cosine.min() > 0.99 and not np.allclose(int8, float32, rtol=1e-5, atol=1e-6)
    # a context's embedding does not depend on the batch it came in (nor on its padding)
    for i, context in enumerate(contexts):
        alone = loaded.embed(loaded.encode_contexts([context]))
        np.testing.assert_array_equal(int8[i : i + 1], alone)
    np.testing.assert_allclose(
        RetrievalResponder.load(bundle, int8=False).embed(both), float32, rtol=1e-4, atol=1e-5
    )
    # a model set training again is served as it is
    loaded.model.train()
    assert loaded._context_encoder_for(both) is loaded.model.context_encoder
    loaded.model.eval()
    # off when asked, or for another dtype; asked for where it cannot be: an error
    assert not RetrievalResponder.load(bundle, int8=False).int8
    assert not RetrievalResponder.load(bundle, dtype=torch.bfloat16).int8
    with pytest.raises(ValueError, match="int8 context encoder needs a float32 model"):
        RetrievalResponder.load(bundle, dtype=torch.bfloat16, int8=True)


def test_an_int8_encoder_far_from_float32_is_not_used(bundle: Path) -> None:
    loaded = RetrievalResponder.load(bundle, int8=False)
    assert not loaded.quantize_context_encoder(min_cosine=1.01)  # no copy can pass that bar
    assert not loaded.int8
    assert loaded.quantize_context_encoder() and loaded.int8
    assert loaded._traced is not None  # traced again, in int8
    one = loaded.encode_contexts([["hi"]])
    np.testing.assert_array_equal(loaded.embed(one), loaded.embed(one.expand(2, -1))[:1])


def test_bundle_whose_index_count_disagrees_refuses_to_load(
    responder: RetrievalResponder, bundle: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(bundle)
    short = ResponseIndex.build([responder.index.vectors()[:5]], 8, progress=False)
    bad = tmp_path / "bad"
    write_bundle(  # checksums are right: only the count is wrong
        bad,
        kind="retriever",
        name="bad",
        model_config=manifest.model_config,
        training={},
        metrics={},
        state_dict=responder.model.state_dict(),
        tokenizer_json=responder.tokenizer.to_str(),
        extra_files={
            "responses.jsonl": bundle / "responses.jsonl",
            "index.faiss": short.to_bytes(),
        },
    )
    verify_bundle(bad)
    with pytest.raises(
        BundleError, match=r"index\.faiss holds 5 vectors .* responses\.jsonl has 8 rows"
    ) as err:
        RetrievalResponder.load(bad)
    assert err.value.file == "index.faiss"


def test_bundle_with_unreadable_index_or_bad_ids_names_the_file(
    bundle: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(bundle)
    common: dict[str, Any] = dict(
        kind="retriever",
        name="bad",
        model_config=manifest.model_config,
        training={},
        metrics={},
        state_dict=RetrievalResponder.load(bundle).model.state_dict(),
        tokenizer_json=(bundle / "tokenizer.json").read_text(),
    )
    write_bundle(
        tmp_path / "junk",
        **common,
        extra_files={"responses.jsonl": bundle / "responses.jsonl", "index.faiss": b"junk"},
    )
    with pytest.raises(BundleError, match=r"index\.faiss is not a readable FAISS index"):
        RetrievalResponder.load(tmp_path / "junk")
    rows = (bundle / "responses.jsonl").read_text().replace('"id": 3', '"id": 4')
    write_bundle(
        tmp_path / "ids",
        **common,
        extra_files={"responses.jsonl": rows.encode(), "index.faiss": bundle / "index.faiss"},
    )
    with pytest.raises(BundleError, match=r"responses\.jsonl line 4 has id 4, expected 3"):
        RetrievalResponder.load(tmp_path / "ids")


def test_corrupt_index_file_fails_its_checksum(bundle: Path) -> None:
    with (bundle / "index.faiss").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"index\.faiss checksum mismatch"):
        RetrievalResponder.load(bundle)


def test_rebuild_index_repairs_a_bundle_and_sets_ef_search(bundle: Path) -> None:
    before = RetrievalResponder.load(bundle).index.vectors()
    (bundle / "index.faiss").write_bytes(b"broken")
    manifest = rebuild_index(bundle, ef_search=48, progress=False)
    assert manifest.model_config["index"]["ef_search"] == 48
    assert manifest.metrics["index_recall@1"] >= 0.99
    loaded = RetrievalResponder.load(bundle)
    assert loaded.index.index.hnsw.efSearch == 48
    np.testing.assert_allclose(loaded.index.vectors(), before, rtol=1e-5, atol=1e-5)
    assert read_responses(bundle)[0] == RESPONSES


def _with_reranker(responder: RetrievalResponder, weight: float) -> RetrievalResponder:
    from models.lexical import LexicalReranker

    reranker = LexicalReranker.fit(RESPONSES, weight=weight, candidates=8)
    return RetrievalResponder(
        responder.model,
        responder.tokenizer,
        responder.inputs,
        responder.index,
        responder.responses,
        responder.sources,
        reranker=reranker,
    )


def test_lexical_reranking_mixes_standardised_scores_and_follows_word_overlap(
    responder: RetrievalResponder,
) -> None:
    from models.lexical import zscore

    context = [["I want to know the time now"]]
    dense = responder.respond(context, top_k=8)[0]
    # A large weight makes the TF-IDF side decide: the response sharing the most words wins.
    heavy = _with_reranker(responder, weight=50.0)
    (top,) = heavy.respond(context, top_k=1)
    assert top[0][0] == "what time is it now ?"
    # The returned score is z(dense) + weight * z(tfidf) over the candidates (here the whole
    # set of 8: the index's best 8 and the lexical ones), by hand.
    light = _with_reranker(responder, weight=0.5)
    row = light.respond(context, top_k=8)[0]
    dense_by_text = dict(dense)
    texts = [t for t, _ in dense]
    d = np.array([dense_by_text[t] for t in texts])
    reranker = light.reranker
    assert reranker is not None
    q = reranker.vectors(["i want to know the time now"])
    lex = (reranker.vectors(texts) @ q.T).toarray().ravel()
    expected = dict(zip(texts, zscore(d) + 0.5 * zscore(lex), strict=True))
    assert {t for t, _ in row} == set(texts)
    for text, score in row:
        assert score == pytest.approx(expected[text], rel=1e-4, abs=1e-4)
    assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    # Weight 0 or no contexts: the dense ranking, unchanged.
    assert _with_reranker(responder, weight=0.0).respond(context, top_k=8)[0] == dense
    emb = light.embed(light.encode_contexts(context))
    assert light.search(emb, 8) == [dense]


def test_reranking_never_answers_with_a_turn_of_the_context(responder: RetrievalResponder) -> None:
    heavy = _with_reranker(responder, weight=50.0)
    (row,) = heavy.respond([["good night .", "What time is it now?"]], top_k=8)
    texts = [t for t, _ in row]
    assert "what time is it now ?" not in texts and "good night ." not in texts
    assert len(texts) == len(RESPONSES) - 2
    # Nor one that restates a turn (TF-IDF cosine 0.88 with "what time is it ?" here), while a
    # reply that only shares some words (cosine 0.41) stays.
    (row,) = heavy.respond([["What time is it?"]], top_k=8)
    texts = [t for t, _ in row]
    assert "what time is it now ?" not in texts and "it is ten o'clock ." in texts
    assert texts[0] == "it is ten o'clock ."


def test_reranker_round_trips_through_the_bundle_and_a_bad_one_names_its_file(
    responder: RetrievalResponder, tmp_path: Path
) -> None:
    with_lex = _with_reranker(responder, weight=0.3)
    with_lex.save(tmp_path / "r", name="retriever-lex", training={}, metrics={})
    loaded = RetrievalResponder.load(tmp_path / "r", int8=False)  # as with_lex encodes
    assert loaded.reranker is not None and loaded.reranker.weight == 0.3
    assert loaded.reranker.vocabulary == with_lex.reranker.vocabulary  # type: ignore[union-attr]
    context = [["good morning !"]]
    assert loaded.respond(context, top_k=3) == with_lex.respond(context, top_k=3)
    # A lexical.json that parses but is not a re-ranker: one error naming the file.
    manifest = read_manifest(tmp_path / "r")
    bad = b'{"weight": 0.3}'
    write_bundle(
        tmp_path / "bad",
        kind="retriever",
        name="bad",
        model_config=manifest.model_config,
        training={},
        metrics={},
        state_dict=responder.model.state_dict(),
        tokenizer_json=responder.tokenizer.to_str(),
        extra_files={
            "responses.jsonl": tmp_path / "r" / "responses.jsonl",
            "index.faiss": tmp_path / "r" / "index.faiss",
            "lexical.json": bad,
        },
    )
    with pytest.raises(BundleError, match=r"lexical\.json"):
        RetrievalResponder.load(tmp_path / "bad")


def test_candidate_scores_are_the_served_scores(responder: RetrievalResponder) -> None:
    hybrid = _with_reranker(responder, weight=0.7)
    contexts = [["what time is it ?"], ["good night"]]
    cand = np.array([[0, 1, 6, 7], [7, 2, 3, 0]])
    dense = responder.candidate_scores(contexts, RESPONSES, cand)
    ctx = responder.embed(responder.encode_contexts(contexts))
    vec = responder.index.vectors()
    np.testing.assert_allclose(dense, np.einsum("nd,nkd->nk", ctx, vec[cand]), rtol=1e-4)
    mixed = hybrid.candidate_scores(contexts, RESPONSES, cand)
    assert mixed.shape == (2, 4) and not np.allclose(mixed, dense)
    np.testing.assert_allclose(hybrid.candidate_scores(contexts, RESPONSES, cand, weight=0), dense)
    # the parts the weight search mixes: the same scores from one encoding, for any weight
    from models.lexical import mix_scores

    parts_dense, lexical = hybrid.candidate_score_parts(contexts, RESPONSES, cand)
    assert lexical is not None and lexical.shape == (2, 4)
    np.testing.assert_allclose(parts_dense, dense, rtol=1e-5)
    np.testing.assert_allclose(mix_scores(parts_dense, lexical, 0.7), mixed, rtol=1e-5)
    np.testing.assert_allclose(
        mix_scores(parts_dense, lexical, 0.3),
        hybrid.candidate_scores(contexts, RESPONSES, cand, weight=0.3),
        rtol=1e-5,
    )
    assert responder.candidate_score_parts(contexts, RESPONSES, cand)[1] is None  # no re-ranker


def test_lexical_candidates_come_from_rare_shared_words_best_first() -> None:
    from models.lexical import LexicalReranker

    texts = [f"filler {i} ." for i in range(300)] + [
        "the museum opens at nine .",
        "the museum is closed on monday .",
        "nine o'clock then .",
    ]
    lex = LexicalReranker.fit(texts, weight=1.0)
    lex.index_responses(texts)
    museum, nothing = (
        lex.lexical_candidates(lex.terms(q), 5) for q in ["when does the museum open ?", "xyzzy"]
    )
    # "the" and "museum" are rare (2 of 303 responses): both come back, the shorter one (the
    # higher cosine) first; "filler" is in almost every response and fetches nothing by itself.
    assert museum.tolist() == [300, 301]
    assert nothing.size == 0
    assert lex.lexical_candidates(lex.terms("filler"), 5).size == 0


def test_hand_built_query_vectors_equal_scikit_learns() -> None:
    from models.lexical import LexicalReranker

    lex = LexicalReranker.fit(RESPONSES, weight=1.0)
    queries = ["what time is it now ? now !", "", "unknown words only", "good , good morning"]
    a, b = lex.query_vectors(queries), lex.vectors(queries)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-12, atol=1e-12)


def test_lexical_scores_of_gathered_rows_equal_the_sparse_products() -> None:
    """The batch-1 path (``terms``, ``candidate_scores``, ``lexical_candidates``: numpy on the
    CSR arrays) gives the cosines the sparse matrix products give."""
    from models.lexical import MAX_CANDIDATE_DF, LexicalReranker

    texts = [f"filler {i} words here ." for i in range(200)] + list(RESPONSES) + ["!!!"]
    lex = LexicalReranker.fit(texts, weight=1.0)
    lex.index_responses(texts)
    docs = lex.vectors(texts)
    context = ["good morning , what time is it ?", "it is nine , time for the museum ."]
    terms = lex.context_terms(context)
    query = terms.query
    joined = lex.terms(" ".join(context))
    np.testing.assert_array_equal(query.cols, joined.cols)
    np.testing.assert_allclose(query.weights, joined.weights, rtol=1e-12)
    for i, text in enumerate(context):
        own = lex.terms(text)
        np.testing.assert_array_equal(terms.turn(i).cols, own.cols)
        np.testing.assert_allclose(terms.turn(i).weights, own.weights, rtol=1e-12)
    # "!!!" has no terms (cosine 0); 206, "what time is it now ?", restates the first turn
    ids = np.array([len(texts) - 1, 3, 0, 205, 201, 7, 206])
    lexical, echo = lex.candidate_scores(terms, ids)
    expect = (docs[ids] @ lex.query_vectors([" ".join(context), *context]).T).toarray()
    np.testing.assert_allclose(lexical, expect[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(echo, expect[:, 1:].max(axis=1) >= 0.7)
    assert echo.any() and not echo.all()
    none = lex.context_terms(["!!!", "xyzzy"])  # no known term in any turn
    assert none.cols.size == 0 and none.weights.shape == (3, 0)
    np.testing.assert_array_equal(lex.candidate_scores(none, ids)[0], np.zeros(ids.size))
    # lexical candidates: every response sharing a rare term, ranked by the rare terms' cosine
    found = lex.lexical_candidates(query, 1000)
    q = lex.query_vectors([" ".join(context)]).toarray()[0]
    df = np.asarray((docs > 0).sum(axis=0)).ravel()
    rare = (q > 0) & (df <= max(1, MAX_CANDIDATE_DF * len(texts)))
    heaviest = np.argsort(-np.where(rare, q, 0), kind="stable")[: min(8, int(rare.sum()))]
    kept = np.zeros_like(q)
    kept[heaviest] = q[heaviest]
    scores = docs @ kept
    expect_ids = np.flatnonzero(scores > 0)
    expect_ids = expect_ids[np.lexsort((expect_ids, -scores[expect_ids]))]
    assert found.tolist() == expect_ids.tolist() and found.size > 0


def test_a_micro_batch_is_reranked_as_its_contexts_one_by_one(
    responder: RetrievalResponder,
) -> None:
    """A micro-batch gets what each of its contexts gets alone, whatever its neighbours: an echo
    of one context's turn is dropped for that context only, and a context with no known word
    keeps its dense candidates."""
    hybrid = _with_reranker(responder, weight=0.7)
    contexts = [
        ["good night .", "What time is it now?"],
        ["I want to know the time now"],
        ["xyzzy !!!"],
        ["good morning !", "i am fine , thanks ."],
    ]
    alone = [hybrid.respond([c], top_k=5)[0] for c in contexts]
    together = hybrid.respond(contexts, top_k=5)
    assert [[t for t, _ in row] for row in together] == [[t for t, _ in row] for row in alone]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-6)
    assert "what time is it now ?" not in dict(together[0])
    assert "i am fine , thanks ." not in dict(together[3])
    # generate, then rank: a batch of n-bests scores as each n-best alone
    replies = [["it is ten o'clock .", "what time is it now ?"], [], ["good night ."]]
    ranked = hybrid.rank_replies(contexts[:3], replies)
    for c, row, scores in zip(contexts[:3], replies, ranked, strict=True):
        np.testing.assert_allclose(scores, hybrid.rank_replies([c], [row])[0], rtol=1e-5)
    assert ranked[0][1] == -np.inf and ranked[1].size == 0


def test_rerank_weight_benchmark_scores_every_weight_as_the_build_does(
    responder: RetrievalResponder,
) -> None:
    from benchmarks.rerank_weight import hits_by_weight, pick
    from training.core.data import DialogueExample
    from training.methods.g2r.index import RERANK_WEIGHTS, fit_rerank_weight

    examples = [
        DialogueExample(("hello , how are you ?",), RESPONSES[0]),
        DialogueExample(("what time is it ?",), RESPONSES[1]),
        DialogueExample(("good morning !",), RESPONSES[2]),
        DialogueExample(("bye for now",), RESPONSES[3]),
        DialogueExample(("do you want tea ?",), RESPONSES[4]),
        DialogueExample(("is it late ?",), RESPONSES[6]),
    ]
    table = hits_by_weight(_with_reranker(responder, 0.5), examples, k=4)
    assert list(table) == list(RERANK_WEIGHTS)
    assert all(0.0 <= v <= 1.0 for v in table.values())
    fitted = _with_reranker(responder, 0.5)
    best, build_table = fit_rerank_weight(fitted, examples, hits_k=4)
    assert {float(w): v for w, v in build_table.items()} == pytest.approx(table)
    assert pick(table) == best
    assert pick({0.0: 0.5, 0.3: 0.6, 0.5: 0.6}) == 0.3  # ties go to the smaller weight
