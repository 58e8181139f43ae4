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
