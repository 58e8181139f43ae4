"""Which attention kernel a training step on the CPU runs (models.seq2seq.CPU_TRAINING_ATTENTION):
matmul-softmax-matmul when gradients flow, PyTorch's fused kernel when they do not, the same
numbers either way."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from models import seq2seq
from models.seq2seq import MultiHeadAttention

FUSED_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"


def _attention() -> tuple[MultiHeadAttention, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, dropout=0.0, cross=False)
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return attn, x, mask[:, None, None, :]


def _ops(fn) -> set[str]:  # type: ignore[no-untyped-def]
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_training_on_the_cpu_avoids_the_fused_kernel_and_inference_keeps_it() -> None:
    attn, x, mask = _attention()
    attn.train()
    assert FUSED_OP not in _ops(lambda: attn(x, mask=mask)[0].sum().backward())
    with torch.no_grad():
        assert FUSED_OP in _ops(lambda: attn(x, mask=mask))


def test_the_training_kernel_matches_the_fused_one(monkeypatch: pytest.MonkeyPatch) -> None:
    attn, x, mask = _attention()
    attn.train()
    results = []
    for kernels in (seq2seq.CPU_TRAINING_ATTENTION, ()):
        monkeypatch.setattr(seq2seq, "CPU_TRAINING_ATTENTION", kernels)
        attn.zero_grad()
        xi = x.clone().requires_grad_()
        out = attn(xi, mask=mask, causal=True)[0]
        out.pow(2).sum().backward()
        assert xi.grad is not None and attn.qkv_proj.weight.grad is not None
        results.append((out.detach(), xi.grad.clone(), attn.qkv_proj.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
