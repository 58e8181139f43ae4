"""benchmarks/gpu_check.py: without CUDA it says so and exits 0; its pieces run on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from service_fixtures import build_tiny_bundles

from benchmarks import gpu_check
from models.generator import GenerativeResponder


def test_without_cuda_it_skips_with_a_message_and_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu"), "--artifacts", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing written, no earlier result overwritten


def test_first_difference() -> None:
    assert gpu_check.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert gpu_check.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert gpu_check.first_difference([1, 2], [1, 2, 3]) == 2


def test_precision_check_runs_on_the_cpu(tmp_path: Path) -> None:
    bundle = build_tiny_bundles(tmp_path, retriever=False) / "generator-nd"
    assert gpu_check.generator_bundles(tmp_path) == [bundle]
    reference = GenerativeResponder.load(bundle, "cpu", None)
    same = GenerativeResponder.load(bundle, "cpu", None)
    contexts = [["hello , how are you ?"], ["what time is it ?"], ["good morning !"]]
    check = gpu_check.compare_precisions(reference, same, contexts, tie_margin=0.05)
    assert check["ok"] and check["same_as_fp32"] == 3 and check["continuous_same_as_batch"] == 3


def test_precision_check_on_an_anti_lm_bundle(tmp_path: Path) -> None:
    """A bundle served with MMI-antiLM (small's) decodes with its prior in both precisions (the
    check crashed on it before session 24), and a near tie is judged by the score greedy chose
    with: the penalised one at the anti-LM positions, the plain logits after them."""
    bundle = build_tiny_bundles(tmp_path, retriever=False) / "generator-nd"
    responder = GenerativeResponder.load(bundle, "cpu", None)
    responder.decoding = responder.decoding.with_overrides(anti_lm=0.5, anti_lm_steps=2)
    contexts = [["hello , how are you ?"], ["what time is it ?"]]
    check = gpu_check.compare_precisions(responder, responder, contexts, tie_margin=0.05)
    assert check["ok"] and check["same_as_fp32"] == 2 and check["continuous_same_as_batch"] == 2
    src = responder.encode_contexts(contexts[:1])
    cfg = responder.decoding
    plain = gpu_check.top2_margin(responder.model, src, [])
    penalised = gpu_check.top2_margin(responder.model, src, [], cfg, responder.prior)
    assert plain != pytest.approx(penalised)
    after = [5, 6]  # position 2: past anti_lm_steps, so the plain logits' margin
    assert gpu_check.top2_margin(responder.model, src, after, cfg, responder.prior) == (
        pytest.approx(gpu_check.top2_margin(responder.model, src, after))
    )


@pytest.mark.gpu
def test_the_gpu_check_passes_on_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    build_tiny_bundles(tmp_path)
    contexts = [["hello"], ["how are you ?"], ["hi"]]
    monkeypatch.setattr(gpu_check, "dialogue_contexts", lambda data, turns, n: contexts)
    argv = ["--artifacts", str(tmp_path), "--out", str(tmp_path / "gpu"), "--contexts", "3"]
    argv += ["--repeats", "3", "--batch", "8", "--sizes", "small"]
    assert gpu_check.main(argv) == 0
    assert (tmp_path / "gpu.json").is_file()
