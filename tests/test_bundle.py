"""Tests for models.bundle: atomic writes, validation and the error messages that name the bad file."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from models import bundle
from models.bundle import (
    BUNDLE_KINDS,
    FORMAT_VERSION,
    BundleError,
    Manifest,
    find_bundles,
    load_state_dict,
    read_manifest,
    update_metrics,
    verify_bundle,
    write_bundle,
)

TOKENIZER_JSON = '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}}}'
RESPONSES = (
    b'{"id": 0, "text": "hi", "source": "corpus"}\n{"id": 1, "text": "yo", "source": "teacher"}\n'
)
INDEX_BYTES = b"\x00fake-faiss-index\xff" * 10


def _state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(5, 4, generator=gen),
        "proj.weight": torch.randn(4, 3, generator=gen).t(),  # non-contiguous view
        "proj.bias": torch.zeros(4, dtype=torch.float16),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def _write(out_dir: Path, *, kind: str = "generator", seed: int = 0, **overrides: Any) -> Manifest:
    kwargs: dict[str, Any] = {
        "kind": kind,
        "name": "tiny-gen",
        "model_config": {"d_model": 4, "layers": 1},
        "training": {"data": "toy", "preset": "tiny", "steps": 3, "seed": seed, "method": "mle"},
        "metrics": {"val_loss": 1.5},
        "state_dict": _state_dict(seed),
        "tokenizer_json": TOKENIZER_JSON,
    }
    if kind == "retriever":
        kwargs["extra_files"] = {"responses.jsonl": RESPONSES, "index.faiss": INDEX_BYTES}
    kwargs.update(overrides)
    return write_bundle(out_dir, **kwargs)


def _rewrite_manifest(bundle_dir: Path, **changes: Any) -> None:
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_write_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "artifacts" / "gen"
    written = _write(out)

    manifest = verify_bundle(out)
    assert manifest == written
    assert manifest.format_version == FORMAT_VERSION == 1
    assert manifest.kind == "generator"
    assert manifest.name == "tiny-gen"
    assert manifest.model_config == {"d_model": 4, "layers": 1}
    assert manifest.training["preset"] == "tiny"
    assert manifest.metrics == {"val_loss": 1.5}
    assert set(manifest.files) == {"tokenizer.json", "model.safetensors"}
    assert datetime.fromisoformat(manifest.created_at).utcoffset() is not None
    assert (out / "tokenizer.json").read_text() == TOKENIZER_JSON

    weights_sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert manifest.files["model.safetensors"] == weights_sha
    assert manifest.bundle_id == f"tiny-gen@{weights_sha[:8]}"
    assert re.fullmatch(r"tiny-gen@[0-9a-f]{8}", manifest.bundle_id)

    loaded = load_state_dict(out, manifest)
    expected = _state_dict(0)
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key], tensor)
    assert sorted(p.name for p in out.parent.iterdir()) == ["gen"]


def test_manifest_to_dict_from_dict_round_trip(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "gen")
    data = manifest.to_dict()
    assert list(data) == list(bundle.MANIFEST_KEYS)
    assert Manifest.from_dict(data) == manifest
    assert json.loads((tmp_path / "gen" / "manifest.json").read_text()) == data


def test_write_tied_weights(tmp_path: Path) -> None:
    shared = torch.randn(6, 4)
    state = {
        "encoder.embed.weight": shared,
        "decoder.embed.weight": shared,
        "lm_head.weight": shared,
    }
    manifest = _write(tmp_path / "tied", state_dict=state)

    loaded = load_state_dict(tmp_path / "tied", verify_bundle(tmp_path / "tied"))
    assert manifest.kind == "generator"
    assert loaded.keys() == state.keys()
    for tensor in loaded.values():
        assert torch.equal(tensor, shared)


def test_write_retriever_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "index-src.faiss"
    source.write_bytes(INDEX_BYTES)
    out = tmp_path / "ret"
    _write(out, kind="retriever", extra_files={"responses.jsonl": RESPONSES, "index.faiss": source})

    manifest = verify_bundle(out)
    assert manifest.kind == "retriever"
    assert set(manifest.files) == {
        "tokenizer.json",
        "model.safetensors",
        "responses.jsonl",
        "index.faiss",
    }
    assert (out / "index.faiss").read_bytes() == INDEX_BYTES
    assert (out / "responses.jsonl").read_bytes() == RESPONSES
    assert manifest.files["index.faiss"] == hashlib.sha256(INDEX_BYTES).hexdigest()


def test_write_retriever_without_index_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^a retriever bundle needs extra_files: index\.faiss$"):
        _write(tmp_path / "ret", kind="retriever", extra_files={"responses.jsonl": RESPONSES})
    assert not (tmp_path / "ret").exists()
    assert not (tmp_path / "ret.tmp").exists()


def test_write_unknown_kind_raises(tmp_path: Path) -> None:
    assert BUNDLE_KINDS == ("generator", "retriever", "classifier")
    with pytest.raises(ValueError, match=r"unknown bundle kind 'ranker'"):
        _write(tmp_path / "x", kind="ranker")


def test_verify_missing_file(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(BundleError) as info:
        verify_bundle(out)
    assert str(info.value) == f"bundle {out}: tokenizer.json is missing"
    assert info.value.file == "tokenizer.json"


def test_verify_corrupted_weights(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    manifest = _write(out)
    path = out / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(BundleError) as info:
        verify_bundle(out)
    expected = manifest.files["model.safetensors"]
    assert str(info.value) == (
        f"bundle {out}: model.safetensors checksum mismatch (expected {expected}, got {actual})"
    )
    assert info.value.file == "model.safetensors"


def test_read_manifest_truncated_json(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out)
    path = out / "manifest.json"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(
        BundleError, match=rf"^bundle {re.escape(str(out))}: manifest\.json is not valid JSON: "
    ):
        read_manifest(out)


def test_read_manifest_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError) as info:
        verify_bundle(tmp_path / "empty")
    assert str(info.value) == f"bundle {tmp_path / 'empty'}: manifest.json is missing"


def test_read_manifest_format_version_2(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out)
    _rewrite_manifest(out, format_version=2, new_field="from the future")
    with pytest.raises(BundleError) as info:
        read_manifest(out)
    assert str(info.value) == (
        f"bundle {out}: manifest.json: format_version 2 is not supported (this build reads 1)"
    )


def test_read_manifest_unknown_kind(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out)
    _rewrite_manifest(out, kind="ranker")
    with pytest.raises(BundleError) as info:
        read_manifest(out)
    assert str(info.value) == (
        f"bundle {out}: manifest.json: unknown kind 'ranker' (expected one of: generator, retriever, classifier)"
    )


def test_read_manifest_missing_keys(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out)
    data = json.loads((out / "manifest.json").read_text())
    del data["training"], data["files"]
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as info:
        read_manifest(out)
    assert str(info.value) == f"bundle {out}: manifest.json: missing keys: training, files"


def test_read_manifest_bad_digest(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    manifest = _write(out)
    _rewrite_manifest(out, files={**manifest.files, "tokenizer.json": "abc"})
    with pytest.raises(
        BundleError, match=r"manifest\.json: files\['tokenizer\.json'\] is not a sha256"
    ):
        read_manifest(out)


def test_read_manifest_path_escape(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    manifest = _write(out)
    _rewrite_manifest(out, files={**manifest.files, "../secret": "0" * 64})
    with pytest.raises(
        BundleError, match=r"manifest\.json: files lists an invalid file name '\.\./secret'"
    ):
        read_manifest(out)


def test_verify_retriever_index_not_listed(tmp_path: Path) -> None:
    out = tmp_path / "ret"
    manifest = _write(out, kind="retriever")
    files = {k: v for k, v in manifest.files.items() if k != "index.faiss"}
    _rewrite_manifest(out, files=files)
    with pytest.raises(BundleError) as info:
        verify_bundle(out)
    assert str(info.value) == (
        f"bundle {out}: manifest.json does not list required file index.faiss (kind retriever)"
    )
    assert info.value.file == "index.faiss"


def test_verify_retriever_index_missing(tmp_path: Path) -> None:
    out = tmp_path / "ret"
    _write(out, kind="retriever")
    (out / "index.faiss").unlink()
    with pytest.raises(BundleError) as info:
        verify_bundle(out)
    assert str(info.value) == f"bundle {out}: index.faiss is missing"


def test_write_removes_stale_tmp(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    stale = tmp_path / "gen.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half-written garbage")
    (stale / "leftover.bin").write_bytes(b"x")

    manifest = _write(out)

    assert verify_bundle(out) == manifest
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_write_overwrites_existing_bundle(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    first = _write(out, seed=0)
    (out / "stray-from-v1.txt").write_text("old")
    second = _write(out, seed=1, metrics={"val_loss": 0.9})

    assert first.bundle_id != second.bundle_id
    assert verify_bundle(out) == second
    assert not (out / "stray-from-v1.txt").exists()
    assert torch.equal(load_state_dict(out, second)["embed.weight"], _state_dict(1)["embed.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_write_removes_stale_old(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out)
    (tmp_path / "gen.old").mkdir()  # left by a crash after the swap, before the cleanup
    manifest = _write(out, seed=2)
    assert verify_bundle(out) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_write_crash_keeps_previous_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gen"
    previous = _write(out, seed=0)

    def crash(path: Path, manifest: Manifest) -> None:
        raise OSError("disk full")

    # Weights and tokenizer are already in gen.tmp when the manifest write fails.
    monkeypatch.setattr(bundle, "_write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        _write(out, seed=1)

    assert (tmp_path / "gen.tmp" / "model.safetensors").is_file()
    assert verify_bundle(out) == previous
    assert find_bundles(tmp_path) == [out]

    monkeypatch.undo()
    recovered = _write(out, seed=1)
    assert verify_bundle(out) == recovered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_find_bundles_ignores_tmp_old_and_non_bundles(tmp_path: Path) -> None:
    _write(tmp_path / "b-gen")
    _write(tmp_path / "a-ret", kind="retriever")
    for leftover in ("c.tmp", "c.old"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "manifest.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "manifest.json").write_text("{}")  # a file, not a bundle directory

    assert find_bundles(tmp_path) == [tmp_path / "a-ret", tmp_path / "b-gen"]
    assert find_bundles(tmp_path / "does-not-exist") == []


def test_update_metrics_merges(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    written = _write(out)
    updated = update_metrics(out, {"bleu": 0.12, "val_loss": 1.2})

    assert updated.metrics == {"val_loss": 1.2, "bleu": 0.12}
    assert updated.files == written.files
    assert updated.bundle_id == written.bundle_id
    assert verify_bundle(out) == updated
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_load_state_dict_invalid_safetensors(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    manifest = _write(out)
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(
        BundleError,
        match=rf"^bundle {re.escape(str(out))}: model\.safetensors is not valid safetensors",
    ):
        load_state_dict(out, manifest)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_of_a_bundle_gets_one_mode_from_the_umask(tmp_path: Path, umask: int) -> None:
    import os

    previous = os.umask(umask)
    try:
        out = tmp_path / "ret"
        _write(out, kind="retriever")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    # safetensors alone would write model.safetensors 0600 whatever the umask
    assert set(modes) == {
        "manifest.json",
        "tokenizer.json",
        "model.safetensors",
        "responses.jsonl",
        "index.faiss",
    }
    assert set(modes.values()) == {0o666 & ~umask}, modes
