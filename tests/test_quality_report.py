"""``python -m benchmarks.quality_report`` end to end on random-weight bundles and a small JSONL
corpus (seconds; the real-data run is the report's own command)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import quality_report
from models.biencoder import BiEncoder, BiEncoderConfig
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, InputConfig
from models.retriever import IndexConfig, RetrievalResponder, build_response_index
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.pipeline.selection import select_generator, write_serving

THINGS = ["tea", "coffee", "music", "films", "books", "dogs", "cats", "rain", "tennis", "maths"]
PEOPLE = ["tom", "mary", "jack", "anna", "li", "sam", "kate", "bob", "ann", "joe", "amy", "ben"]
INPUTS = InputConfig(max_context_turns=1, max_source_len=24, max_target_len=12)
RETRIEVER_INPUTS = InputConfig(max_context_turns=2, max_source_len=32, max_target_len=12)
QUERIES = 30


def _pairs(split: str, people: list[str]) -> list[dict[str, Any]]:
    """Three-turn dialogues; every response distinct within the split."""
    out = []
    for person in people:
        for thing in THINGS:
            out.append(
                {
                    "context": [
                        f"hello {person} .",
                        "hi , how are you ?",
                        f"do you like {thing} , {person} ?",
                    ],
                    "response": f"yes , {person} likes {thing} in {split} .",
                }
            )
    return out


def _write_corpus(root: Path) -> list[str]:
    texts = []
    for split, people in (
        ("train", PEOPLE[:6]),
        ("validation", PEOPLE[6:8]),
        ("test", PEOPLE[:12]),
    ):
        pairs = _pairs(split, people)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        texts += [t for p in pairs for t in (*p["context"], p["response"])]
    return texts


def _build_artifacts(artifacts: Path, texts: list[str]) -> None:
    """generator-standard, -negative-teacher and -nd, retriever-g2r (with teacher replies) and
    retriever-biencoder, all random weights, and a serving.json naming generator-nd."""
    tokenizer = DialogueTokenizer.train(texts, vocab_size=150, min_frequency=1)
    ids = {}
    for seed, name in enumerate(
        ["generator-standard", "generator-negative-teacher", "generator-nd"]
    ):
        torch.manual_seed(seed)
        model = Seq2SeqTransformer(
            Seq2SeqConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=16,
                n_heads=2,
                d_ff=32,
                n_encoder_layers=1,
                n_decoder_layers=1,
                dropout=0.0,
                max_positions=48,
            )
        ).eval()
        # the negative teacher decodes with an anti-LM penalty (as small's bundles do)
        anti = 0.5 if name == "generator-negative-teacher" else 0.0
        decoding = DecodingConfig(max_length=8, anti_lm=anti, anti_lm_steps=2)
        manifest = GenerativeResponder(model, tokenizer, INPUTS, decoding).save(
            artifacts / name,
            name=name,
            training={"method": "mle", "preset": "tiny"},
            metrics={},
        )
        ids[name] = manifest.bundle_id
    responses = sorted({t for t in texts if t.startswith("yes ,")})[:80]
    teacher = ["i like that a lot .", "that sounds great .", "not really , sorry ."]
    for seed, (name, method) in enumerate(
        [("retriever-g2r", "g2r-dm"), ("retriever-biencoder", "biencoder")]
    ):
        torch.manual_seed(10 + seed)
        biencoder = BiEncoder(
            BiEncoderConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=16,
                n_heads=2,
                d_ff=32,
                n_layers=1,
                dropout=0.0,
                max_positions=48,
                embed_dim=8,
            )
        ).eval()
        texts_r = responses + (teacher if method == "g2r-dm" else [])
        sources = ["corpus"] * len(responses) + ["teacher"] * (len(texts_r) - len(responses))
        index = build_response_index(
            biencoder,
            tokenizer,
            texts_r,
            RETRIEVER_INPUTS,
            IndexConfig(ef_search=16),
            progress=False,
        )
        RetrievalResponder(biencoder, tokenizer, RETRIEVER_INPUTS, index, texts_r, sources).save(
            artifacts / name, name=name, training={"method": method, "preset": "tiny"}, metrics={}
        )
    evaluations = {
        name: {"perplexity": 100.0 + i, "greedy": {"max-ratio": 0.5 - 0.1 * i, "dist-2": 0.01}}
        for i, name in enumerate(["generator-standard", "generator-nd"])
    }
    chosen, record = select_generator(evaluations)
    record.update(split="validation", pairs=20, bundle_ids=ids)
    write_serving(artifacts, chosen, "retriever-g2r", record)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    base = tmp_path_factory.mktemp("quality")
    data, artifacts = base / "data", base / "artifacts"
    data.mkdir()
    _build_artifacts(artifacts, _write_corpus(data))
    out = base / "reports" / "quality_tiny"
    argv = ["--artifacts", str(artifacts), "--out", str(out), "--data", str(data)]
    argv += ["--queries", str(QUERIES)]
    assert quality_report.main(argv) == 0
    results = json.loads(out.with_name("quality_tiny.json").read_text())
    markdown = out.with_name("quality_tiny.md").read_text()
    return results, markdown, str(artifacts)


def test_generators_ratios_and_serving(report: tuple[dict[str, Any], str, str]) -> None:
    results, _, _ = report
    gens = results["generators"]
    assert list(gens) == ["generator-standard", "generator-nd", "generator-negative-teacher"]
    for g in gens.values():
        assert g["n_examples"] == 120 and math.isfinite(g["perplexity"])
        assert {"dist-1", "dist-2", "bleu-4", "lf", "max-ratio", "avg-len"} <= set(g["greedy"])
    assert gens["generator-negative-teacher"]["anti_lm"] == [0.5, 2]
    assert gens["generator-nd"]["anti_lm"] == [0.0, 2]
    _, markdown, _ = report
    assert "| generator-negative-teacher | generator-negative-teacher@" in markdown
    assert " | 0.5 / 2 | " in markdown and " | off | " in markdown
    assert results["ratio_base"] == "generator-standard"
    assert set(results["ratios"]) == {"generator-nd", "generator-negative-teacher"}
    std, nd = gens["generator-standard"]["greedy"], gens["generator-nd"]["greedy"]
    r = results["ratios"]["generator-nd"]
    assert r["lf"] == nd["lf"]
    if std["bleu-4"]:
        assert r["bleu-4_ratio"] == pytest.approx(nd["bleu-4"] / std["bleu-4"])
    serving = results["serving"]
    assert serving["generative"] == "generator-nd" and serving["generative_note"] == "serving.json"
    assert serving["why"]["chosen"] == "generator-nd"
    assert results["meta"]["preset"] == "tiny"
    assert results["meta"]["context_turns"] == {"generators": 1, "retrievers": 2, "samples": 3}


def test_retrievers_lexical_and_standard_errors(report: tuple[dict[str, Any], str, str]) -> None:
    results, _, _ = report
    rows = {**results["retrievers"], **results["lexical"]}
    assert set(rows) == {"retriever-g2r", "retriever-biencoder", "tfidf", "bm25"}
    for row in rows.values():
        n, p = row["n_examples"], row["hits@1"]
        assert n == 120 and row["hits_k"] == 100
        assert row["hits@1_se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
        assert row["served"]["contexts"] == 120  # min(1000, the test pairs)
    g2r = results["retrievers"]["retriever-g2r"]["served"]
    assert g2r["response_set"] == 83 and g2r["response_set_teacher"] == 3
    assert results["lexical"]["tfidf"]["served"]["response_set"] == 83  # the served set


def test_latency_paper_table_and_samples(report: tuple[dict[str, Any], str, str]) -> None:
    results, markdown, _ = report
    lat = results["latency"]
    assert lat["generator"] == "generator-nd" and lat["retriever"] == "retriever-g2r"
    assert lat["generation"]["n"] == lat["retrieval"]["n"] == QUERIES
    assert lat["speedup_mean"] == pytest.approx(
        lat["generation"]["mean_ms"] / lat["retrieval"]["mean_ms"]
    )
    paper = {r["quantity"]: r for r in results["paper"]}
    assert paper["Standard Dist-2"]["paper"] == 0.0313
    # one of the compared bundles is not decoded as the paper decodes: the note says so
    assert (
        "anti-LM penalty (lambda / tokens 0.5 / 2), not plain greedy"
        in (paper["Standard Dist-2"]["note"])
    )
    assert paper["ND Dist-2"]["ours"] == results["generators"]["generator-nd"]["greedy"]["dist-2"]
    be = paper["G2R Hits@1/K bi-encoder"]
    assert be["ours"] == results["retrievers"]["retriever-biencoder"]["hits@1"]
    assert "BST+" in be["note"] and "K = 100" in be["note"]  # the datasets and K differ
    assert paper["retrieval vs generation speed-up (mean latency)"]["ours"] == lat["speedup_mean"]
    samples = results["samples"]
    assert len(samples) == 20
    assert [tuple(s["context"]) for s in samples[14:]] == list(quality_report.PROBES)
    assert all(s["source"] == "test" and 1 <= len(s["context"]) <= 3 for s in samples[:14])
    systems = {*results["generators"], *results["retrievers"], "tfidf"}
    assert all(set(s["replies"]) == systems for s in samples)
    assert results["meta"]["load_average_before"] and results["meta"]["load_average_after"]
    for heading in ("Command: `", "Load average", "| quantity | paper value | ours | ratio |"):
        assert heading in markdown
    assert "i lost my wallet / what should i do now ?" in markdown
