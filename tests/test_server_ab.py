"""benchmarks/server_ab.py: variants parse into DIALOGUE_* settings, medians and ratios are the
first variant's."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.server_ab import medians, parse_variant, render


def test_a_variant_is_a_name_and_settings() -> None:
    assert parse_variant("prefill:PREFILL_THREAD=true, max_batch=8") == (
        "prefill",
        {"DIALOGUE_PREFILL_THREAD": "true", "DIALOGUE_MAX_BATCH": "8"},
    )
    assert parse_variant("defaults:") == ("defaults", {})
    for bad in ("no-colon", ":X=1", "a:X"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_variant(bad)


def test_medians_and_ratios_against_the_first_variant() -> None:
    def cell(variant: str, rps: float, p50: float) -> dict[str, object]:
        return {"variant": variant, "concurrency": 32, "throughput_rps": rps, "p50_ms": p50}

    report = {
        "variants": {"a": {}, "b": {"DIALOGUE_X": "1"}},
        "cells": [
            cell("a", 100, 10),
            cell("b", 150, 8),
            cell("a", 120, 12),
            cell("b", 90, 30),
            cell("a", 110, 11),
            cell("b", 132, 9),
        ],
        "machine": {"platform": "p", "cpu_count": 2, "load_average_at_start": [0, 0, 0]},
        "command": "python -m benchmarks.server_ab",
    }
    rows = {r["variant"]: r for r in medians(report)}
    assert rows["a"]["rps"] == 110 and rows["b"]["rps"] == 132
    assert rows["b"]["rps_ratio"] == pytest.approx(1.2) and rows["b"]["p50_ratio"] == pytest.approx(
        9 / 11
    )
    assert "| b | DIALOGUE_X=1 | 32 | 3 | 132.0 | 9.00 | 1.20 | 0.82 |" in render(report)
