"""The shallow context encoder distilled from a trained retriever (training/methods/g2r/context_distill.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.biencoder import BiEncoder, BiEncoderConfig
from training.methods.g2r.context_distill import (
    ContextDistillObjective,
    DistillBatch,
    student_of,
)

CFG = BiEncoderConfig(
    vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=2, embed_dim=8, dropout=0.0
)


def test_student_keeps_the_first_layers_and_the_whole_frozen_response_side() -> None:
    teacher = BiEncoder(CFG).eval()
    student = student_of(teacher, 1)
    assert student.cfg.context_layers == 1 and len(student.context_encoder.layers) == 1
    assert student.response_encoder is not None and len(student.response_encoder.layers) == 2
    t, s = teacher.state_dict(), student.state_dict()
    assert "context_encoder.layers.1.norm1.weight" not in s
    assert all(torch.equal(v, t[k]) for k, v in s.items())
    assert not any(p.requires_grad for p in student.response_encoder.parameters())
    assert BiEncoderConfig.from_dict(student.cfg.to_dict()) == student.cfg
    with pytest.raises(ValueError):
        student_of(teacher, 2)


def test_a_shared_teacher_is_split_into_a_cut_context_side_and_a_whole_response_side() -> None:
    from dataclasses import replace

    teacher = BiEncoder(replace(CFG, shared=True)).eval()
    student = student_of(teacher, 1).eval()
    ids = torch.tensor([[3, 4, 5]])
    assert torch.allclose(student.encode_responses(ids), teacher.encode_responses(ids), atol=1e-5)


def test_objective_is_ce_at_alpha_one_and_adds_the_teacher_cross_entropy() -> None:
    model = BiEncoder(CFG).eval()
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    responses = torch.randn(3, 8)
    teacher = torch.randn(2, 8)
    batch = DistillBatch(ids, responses, teacher, torch.tensor([2, 0]))
    scores = model.encode_contexts(ids).float() @ responses.T
    ce = torch.nn.functional.cross_entropy(scores, batch.gold)
    p = (teacher @ responses.T).softmax(dim=1)
    kd = -(p * scores.log_softmax(dim=1)).sum(dim=1).mean()
    loss, logs = ContextDistillObjective(1.0, 1.0)(model, batch)
    assert torch.allclose(loss, ce)
    loss, logs = ContextDistillObjective(0.5, 1.0)(model, batch)
    assert torch.allclose(loss, 0.5 * ce + 0.5 * kd) and logs["kd"] == pytest.approx(kd.item())


def test_context_embeddings_come_back_in_input_order_whatever_the_length_sort() -> None:
    from models.tokenizer import DialogueTokenizer
    from training.methods.g2r.index import embed_context_ids

    words = ["hi", "how", "are", "you", "fine", "thanks", "what", "time", "is", "it", "?", "."]
    tok = DialogueTokenizer.train([" ".join(words)] * 5 + words, vocab_size=50, min_frequency=1)
    model = BiEncoder(CFG).eval()
    ids = tok.encode_contexts([["how are you ?"], ["hi"], ["what time is it ?", "fine ."]], 16)
    one_by_one = torch.cat([model.encode_contexts(tok.pad([row])) for row in ids]).detach()
    assert torch.allclose(embed_context_ids(model, tok, ids), one_by_one, atol=1e-5)


def test_distill_context_command_end_to_end_on_a_tiny_two_layer_retriever(
    tmp_path: Path, dailydialog_dir: Path
) -> None:
    """`train-retriever` a 2-layer bi-encoder, then `distill-context` it to one context layer: the
    bundle verifies, says what it was distilled from, keeps the teacher's response side and so
    its index, and serves."""
    import numpy as np

    from models.bundle import verify_bundle
    from models.retriever import RetrievalResponder
    from training.cli import parse_args

    def cli(argv: list[str]) -> int:
        args = parse_args(argv)
        return int(args.run(args))

    common = ["--preset", "tiny", "--data", str(dailydialog_dir), "--device", "cpu"]
    runs = ["--runs", str(tmp_path / "runs")]
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "fast"
    two_layers = ["--set", "retriever.model.n_layers=2"]
    train = ["train-retriever", "--method", "biencoder", "--out", str(teacher_dir), *two_layers]
    assert cli([*train, *common, *runs]) == 0
    distill = ["distill-context", "--bundle", str(teacher_dir), "--out", str(student_dir)]
    assert cli([*distill, "--epochs", "1", "--max-train-examples", "512", *common, *runs]) == 0
    manifest = verify_bundle(student_dir)
    assert manifest.kind == "retriever" and manifest.training["method"] == "context-distill"
    assert manifest.training["teacher"] == RetrievalResponder.load(teacher_dir).bundle_id
    assert manifest.model_config["biencoder"]["context_layers"] == 1
    assert {"hits@1", "served_hits@1", "index_recall@1"} <= set(manifest.metrics)
    teacher = RetrievalResponder.load(teacher_dir, int8=False)
    student = RetrievalResponder.load(student_dir, int8=False)
    assert len(student.model.context_encoder.layers) == 1
    assert len(teacher.model.context_encoder.layers) == 2
    t_state, s_state = teacher.model.state_dict(), student.model.state_dict()
    response_side = [k for k in t_state if k.startswith("response_encoder.")]
    assert response_side and all(torch.equal(t_state[k], s_state[k]) for k in response_side)
    assert student.responses == teacher.responses
    np.testing.assert_allclose(student.index.vectors(), teacher.index.vectors(), atol=1e-5)
    (row,) = student.respond([["hello , how are you ?"]], top_k=3)
    assert len(row) == 3 and all(text in student.responses for text, _ in row)
