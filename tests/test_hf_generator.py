"""Hugging Face generator bundles (issue 15): import (safetensors only), load with every checksum
verified, batched replies equal to one-by-one ones, the service answering from one, and an HF
bundle as the G2R teacher. Tiny random-weight models built here (tests/hf_fixtures.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from fastapi.testclient import TestClient
from hf_fixtures import CHAT_TEMPLATE, save_tiny_hf_model
from service_fixtures import build_tiny_bundles, make_settings

from models.bundle import MANIFEST_FILE, BundleError, read_manifest
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, load_generator
from models.hf_generator import HFGenerativeResponder, chat_messages, import_hf_model
from models.responder import BundleKindError
from training.cli import main as training_main

CONTEXTS = [
    ["hello , how are you ?"],
    ["say , jim , how about going for a few beers after dinner ?", "what do you mean ?"],
    ["do you really think so ?", "i don't .", "it will help us to relax ."],
]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "causal": save_tiny_hf_model(root / "gpt2-tiny", "causal"),
        "seq2seq": save_tiny_hf_model(root / "bart-tiny", "seq2seq"),
        "chat": save_tiny_hf_model(root / "gpt2-chat", "causal", chat_template=CHAT_TEMPLATE),
    }


@pytest.fixture(scope="module")
def bundles(hf_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    for kind, src in hf_dirs.items():
        import_hf_model(src, out / f"hf-{kind}", decoding=DecodingConfig(max_length=8))
    return {kind: out / f"hf-{kind}" for kind in hf_dirs}


def test_import_writes_a_checksummed_bundle_of_the_right_architecture(
    bundles: dict[str, Path],
) -> None:
    for kind, arch in (("causal", "hf-causal"), ("seq2seq", "hf-seq2seq")):
        manifest = read_manifest(bundles[kind])
        assert manifest.kind == "generator" and manifest.architecture == arch
        assert "config.json" in manifest.files and "model.safetensors" in manifest.files
        assert "tokenizer.json" in manifest.files
        assert not any(f.endswith((".bin", ".pt")) for f in manifest.files)
        mc = manifest.model_config
        assert mc["prompt"]["format"] == "separator" and mc["prompt"]["separator"] == "\n"
        assert mc["decoding"]["max_length"] == 8 and mc["decoding"]["strategy"] == "greedy"
        raw = json.loads((bundles[kind] / MANIFEST_FILE).read_text())
        assert list(raw)[:3] == ["format_version", "kind", "architecture"]
    assert read_manifest(bundles["chat"]).model_config["prompt"]["format"] == "chat_template"
    # 128 positions, 8 reserved for the reply
    assert read_manifest(bundles["causal"]).model_config["prompt"]["max_source_len"] == 120


def test_import_refuses_pickle_weights_and_names_the_fix(
    hf_dirs: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "pickled"
    src.mkdir()
    for f in hf_dirs["causal"].iterdir():
        if not f.name.endswith(".safetensors"):
            (src / f.name).write_bytes(f.read_bytes())
    torch.save({"w": torch.zeros(1)}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*safe_serialization=True"):
        import_hf_model(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the CLI says the same and exits 2
    assert training_main(["import-hf", "--model", str(src), "--out", str(tmp_path / "o2")]) == 2


def test_import_leaves_pickle_out_when_safetensors_are_there(
    hf_dirs: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "both"
    src.mkdir()
    for f in hf_dirs["causal"].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    torch.save({"w": torch.zeros(1)}, src / "pytorch_model.bin")
    manifest = import_hf_model(src, tmp_path / "out")
    assert "pytorch_model.bin" not in manifest.files
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    assert manifest.training["left_out"] == ["pytorch_model.bin"]


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "chat"])
def test_greedy_batch_of_different_lengths_equals_one_by_one(
    bundles: dict[str, Path], kind: str
) -> None:
    gen = load_generator(bundles[kind])
    assert isinstance(gen, HFGenerativeResponder) and gen.bundle_id.startswith(f"hf-{kind}@")
    greedy = gen.decoding
    batch = gen.reply_each(CONTEXTS, [greedy] * len(CONTEXTS))
    alone = [gen.reply_each([c], [greedy])[0] for c in CONTEXTS]
    assert [r[0].tokens for r in batch] == [r[0].tokens for r in alone]
    assert [r[0].text for r in batch] == [r[0].text for r in alone]
    assert batch == gen.reply_each(CONTEXTS, [greedy] * len(CONTEXTS))  # deterministic
    assert all(1 <= len(r[0].tokens) <= 8 for r in batch)
    eos = gen.tokenizer.eos_token_id
    assert all(eos not in r[0].tokens and 0 not in r[0].tokens for r in batch)


def test_decoding_options_map_onto_generate(bundles: dict[str, Path]) -> None:
    gen = load_generator(bundles["seq2seq"])
    sample = DecodingConfig(strategy="sample", max_length=6, top_k=5, num_return_sequences=3)
    beam = DecodingConfig(strategy="beam", max_length=6, beam_size=3, num_return_sequences=2)
    short = DecodingConfig(max_length=3, min_length=3)
    stages: list[str] = []
    out = gen.reply_each(
        CONTEXTS, [sample, beam, short], on_stage=lambda stage, s: stages.append(stage)
    )
    assert [len(r) for r in out] == [3, 2, 1]
    assert len(out[2][0].tokens) == 3  # min_length = max_length: exactly 3 tokens
    assert all(len(r.tokens) <= 6 for row in out for r in row)
    assert stages == ["tokenize", "generate"] * 3  # one group per distinct config


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_block_adjacent_repeats_reaches_generate(bundles: dict[str, Path], kind: str) -> None:
    """Our logits processor keeps transformers' generate from repeating a token back to back,
    only within the reply (the prompt's last token may open it)."""
    gen = load_generator(bundles[kind])
    long = DecodingConfig(max_length=12, min_length=12)

    def repeats(cfg: DecodingConfig) -> int:
        out = gen.reply_each(CONTEXTS, [cfg] * len(CONTEXTS))
        return sum(a == b for r in out for a, b in itertools.pairwise(r[0].tokens))

    assert repeats(long) > 0  # random weights stutter without the rule
    assert repeats(long.with_overrides(block_adjacent_repeats=True)) == 0


def test_chat_template_prompt_alternates_back_from_the_user(bundles: dict[str, Path]) -> None:
    assert [m["role"] for m in chat_messages(["a", "b", "c"])] == ["user", "assistant", "user"]
    # an even count would open with the assistant: the oldest turn goes
    assert [m["content"] for m in chat_messages(["a", "b", "c", "d"])] == ["b", "c", "d"]
    gen = load_generator(bundles["chat"])
    assert isinstance(gen, HFGenerativeResponder)
    assert gen.prompt(["hi", "hello", "how are you ?"]) == (
        "<|user|>hi\n<|assistant|>hello\n<|user|>how are you ?\n<|assistant|>"
    )
    plain = load_generator(bundles["causal"])
    assert isinstance(plain, HFGenerativeResponder)
    assert plain.prompt(["hi", "how are you ?"]) == "hi\nhow are you ?\n"


def test_a_corrupt_or_missing_file_is_refused_naming_it(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    for victim in ("model.safetensors", "config.json", "tokenizer.json"):
        bad = tmp_path / f"bad-{victim}"
        bad.mkdir()
        for f in bundles["causal"].iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        data = bytearray((bad / victim).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / victim).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"{victim} checksum mismatch") as err:
            load_generator(bad)
        assert err.value.file == victim
    gone = tmp_path / "gone"
    gone.mkdir()
    for f in bundles["causal"].iterdir():
        if f.name != "model.safetensors":
            (gone / f.name).write_bytes(f.read_bytes())
    with pytest.raises(BundleError, match=r"model\.safetensors is missing"):
        load_generator(gone)


def test_our_loader_refuses_an_hf_bundle_and_load_generator_still_loads_ours(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(BundleKindError, match="hf-causal generator, not one of ours"):
        GenerativeResponder.load(bundles["causal"])
    ours = build_tiny_bundles(tmp_path, retriever=False) / "generator-nd"
    assert "architecture" not in json.loads((ours / MANIFEST_FILE).read_text())
    assert isinstance(load_generator(ours), GenerativeResponder)
    with pytest.raises(BundleKindError):
        load_generator(build_tiny_bundles(tmp_path / "r", generator=False) / "retriever-g2r")


def test_the_service_answers_from_an_hf_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path, generator=False)
    (models_dir / "hf-causal").symlink_to(bundles["causal"], target_is_directory=True)
    settings = make_settings(models_dir, generative_bundle="hf-causal")
    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        models = {m["backend"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["generative"]["model"].startswith("hf-causal@")
        assert models["generative"]["device"] == "cpu"
        body = {"context": ["hello , how are you ?"], "backend": "generative"}
        first = client.post("/respond", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["model"] == models["generative"]["model"]
        assert first.json()["backend"] == "generative"
        assert client.post("/respond", json=body).json()["response"] == first.json()["response"]
        beam = client.post("/respond", json={**body, "options": {"strategy": "beam"}})
        assert beam.status_code == 200, beam.text


def test_g2r_augment_with_an_hf_teacher_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    from training.config import AugmentConfig
    from training.methods.g2r.augment import (
        ContextGroup,
        augment_contexts,
        augmentation_status,
        read_shards,
    )
    from training.methods.g2r.hf_teacher import HFTeacher
    from training.methods.g2r.teachers import load_teacher

    teacher = load_teacher(bundles["seq2seq"])
    assert isinstance(teacher, HFTeacher) and teacher.name.startswith("hf-seq2seq@")
    groups = [ContextGroup(tuple(c), ("i am fine .",)) for c in CONTEXTS]
    cfg = AugmentConfig(m=2, min_lengths=(1,), max_length=6, batch_contexts=2)
    assert augment_contexts(teacher, groups, tmp_path, cfg, progress=False) == 3
    header, records = read_shards(tmp_path)
    assert header is not None and "scores" not in header
    assert augmentation_status(tmp_path) == (3, 3)
    for rec in records.values():
        assert len(rec["generated"]) == 2
        assert all(g["ll"] < 0 for g in [*rec["gold"], *rec["generated"]] if g["text"])
    assert augment_contexts(teacher, groups, tmp_path, cfg, progress=False) == 0  # resumed


def test_import_hf_cli(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "hf-cli"
    argv = ["import-hf", "--model", str(hf_dirs["seq2seq"]), "--out", str(out)]
    assert training_main([*argv, "--separator", " | ", "--max-new-tokens", "12"]) == 0
    mc = read_manifest(out).model_config
    assert mc["prompt"]["separator"] == " | " and mc["decoding"]["max_length"] == 12


def test_the_readme_arms_serve_an_hf_bundle_beside_a_retriever(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """The README's worked example: DIALOGUE_ARMS with the HF bundle as arm `big` at 10% and a
    retriever as arm `g2r` at 90% (the arm's backend read from each bundle's manifest)."""
    models_dir = build_tiny_bundles(tmp_path, generator=False)
    (models_dir / "hf-big").symlink_to(bundles["causal"], target_is_directory=True)
    arms = (
        '{"big": {"bundle": "hf-big", "weight": 0.1}, '
        '"g2r": {"bundle": "retriever-g2r", "weight": 0.9}}'
    )
    from service.app import create_app

    settings = make_settings(models_dir, arms=json.loads(arms))
    with TestClient(create_app(settings)) as client:
        body = {"context": ["hello , how are you ?"]}
        big = client.post("/respond", json={**body, "arm": "big"})
        assert big.status_code == 200, big.text
        assert big.json()["backend"] == "generative" and big.json()["model"].startswith(
            "hf-causal@"
        )
        g2r = client.post("/respond", json={**body, "arm": "g2r"})
        assert g2r.status_code == 200 and g2r.json()["backend"] == "retrieval"
        served = [
            client.post("/respond", json={**body, "session_id": f"s{i}"}).json()["arm"]
            for i in range(40)
        ]
        assert set(served) <= {"big", "g2r"} and served.count("g2r") > served.count("big")


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_an_hf_teacher_keeps_prompt_and_reply_within_the_models_positions(
    bundles: dict[str, Path], kind: str
) -> None:
    """128 positions: a long context and a reply longer than the model can read are cut (the
    prompt's oldest tokens first), not an index error in the position embeddings."""
    from training.methods.g2r.teachers import load_teacher

    teacher = load_teacher(bundles[kind])
    long_turn = " ".join(["how about going for a few beers after dinner ?"] * 30)
    ll, mi = teacher.score([[long_turn, "what ?"]], [long_turn])
    assert len(ll) == len(mi) == 1 and all(x == x and x < 0 for x in ll)  # finite, not NaN
    replies = teacher.sample([[long_turn]], 2, max_length=8)
    assert [len(r) for r in replies] == [2]
