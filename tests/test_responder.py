"""The responder contract of models/responder.py: one load (verify + kind check) and save for
every bundled model, and the serving calls the service uses, with their stage times."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from service_fixtures import build_tiny_bundles

from models.bundle import BundleError
from models.generator import GenerativeResponder
from models.responder import BundleKindError, Responder
from models.retriever import RetrievalResponder
from models.safety import SafetyClassifier


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.mark.parametrize(
    ("responder_class", "bundle"),
    [
        (RetrievalResponder, "generator-nd"),
        (GenerativeResponder, "retriever-g2r"),
        (SafetyClassifier, "generator-nd"),
    ],
)
def test_load_refuses_a_bundle_of_another_kind(
    bundles: Path, responder_class: type[Responder], bundle: str
) -> None:
    with pytest.raises(BundleKindError, match=f"bundle, not a {responder_class.kind}$") as info:
        responder_class.load(bundles / bundle)
    # still what callers caught before the contract: a ValueError, and a BundleError
    assert isinstance(info.value, ValueError) and isinstance(info.value, BundleError)
    assert info.value.file == "manifest.json"


@pytest.mark.parametrize(
    ("responder_class", "bundle"),
    [(GenerativeResponder, "generator-nd"), (RetrievalResponder, "retriever-g2r")],
)
def test_save_then_load_gives_the_same_model_in_eval_mode(
    bundles: Path, tmp_path: Path, responder_class: type[Responder], bundle: str
) -> None:
    responder = responder_class.load(bundles / bundle)
    assert responder.device == torch.device("cpu") and not responder.model.training
    manifest = responder.save(tmp_path / bundle, name=bundle, training={}, metrics={})
    again = responder_class.load(tmp_path / bundle)
    assert again.bundle_id == manifest.bundle_id == responder.bundle_id
    assert again.model_config() == responder.model_config()
    for (name, a), (_, b) in zip(
        responder.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_reply_each_decodes_each_context_with_its_own_config(bundles: Path) -> None:
    responder = GenerativeResponder.load(bundles / "generator-nd")
    full = responder.decoding.with_overrides(strategy="greedy")
    short = full.with_overrides(max_length=2, min_length=1)
    contexts = [["hello , how are you ?"], ["good morning !"], ["see you ."]]
    configs = [full, short, full]
    stages: list[str] = []
    replies = responder.reply_each(
        contexts, configs, on_stage=lambda stage, _: stages.append(stage)
    )
    alone = [responder.respond([c], cfg)[0] for c, cfg in zip(contexts, configs, strict=True)]
    assert [row[0].text for row in replies] == alone
    assert len(replies[1][0].tokens) <= 2
    assert stages == ["tokenize", "generate", "tokenize", "generate"]  # one batch per config


def test_retrieval_respond_reports_its_three_stages(bundles: Path) -> None:
    responder = RetrievalResponder.load(bundles / "retriever-g2r")
    stages: list[str] = []
    hits = responder.respond(
        [["hello , how are you ?"]], 3, on_stage=lambda stage, _: stages.append(stage)
    )
    assert stages == ["tokenize", "encode", "search"]
    assert len(hits) == 1 and len(hits[0]) == 3
    assert [s for _, s in hits[0]] == sorted((s for _, s in hits[0]), reverse=True)
