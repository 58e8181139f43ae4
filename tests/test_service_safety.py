"""The output safety filter through the HTTP API: blocklisted and classifier-blocked replies are
re-ranked or replaced and counted once in dialogue_safety_blocked_total; settings; reload; turns
the classifier cannot read (emoji, other languages, links) do not block a harmless reply by
themselves; a reply that ignores a stated self-harm risk is blocked."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_fixtures import (
    CONTEXTS,
    RESPONSES,
    build_tiny_bundles,
    make_settings,
    parse_metrics,
    sample,
)

from models.bundle import BundleError
from models.safety import Blocklist, RiskDetector, SafetyClassifier, SafetyClassifierConfig
from models.safety import build_classifier_model as build_model
from models.tokenizer import DialogueTokenizer
from service.app import create_app
from service.metrics import ServiceMetrics
from service.safety import SafetyFilter
from service.settings import Settings

FALLBACK = "let's talk about something else ."
BLOCKED = "dialogue_safety_blocked_total"
TOKEN = "s3cret-token-for-tests"


def build_tiny_classifier(models_dir: Path, *, seed: int = 0, threshold: float = 0.5) -> Path:
    """A random-weight ``safety-classifier`` bundle with a one-phrase blocklist."""
    tokenizer = DialogueTokenizer.train([*RESPONSES, *CONTEXTS] * 3, 120, min_frequency=1)
    torch.manual_seed(seed)
    cfg = SafetyClassifierConfig(
        "cross-encoder",
        vocab_size=tokenizer.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=1,
        dropout=0.0,
        max_len=32,
    )
    clf = SafetyClassifier(
        build_model(cfg), tokenizer, cfg, threshold=threshold, blocklist=Blocklist(["zzzz"])
    )
    clf.save(models_dir / "safety-classifier", name="safety-classifier", training={}, metrics={})
    return models_dir


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def with_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_classifier(build_tiny_bundles(tmp_path_factory.mktemp("safe")))


def _client(models_dir: Path, **overrides: Any) -> TestClient:
    return TestClient(create_app(make_settings(models_dir, **overrides)))


def _blocked(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    m = parse_metrics(client.get("/metrics").text)
    return {k: v for k, v in m.items() if k[0] == BLOCKED}


def _ask(client: TestClient, backend: str, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"context": [CONTEXTS[0]], "backend": backend}
    if options:
        body["options"] = options
    resp = client.post("/respond", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


@pytest.fixture(scope="module")
def unfiltered_top3(plain_dir: Path) -> list[str]:
    """The retriever's top 3 for CONTEXTS[0] with the filter off."""
    with _client(plain_dir, safety_filter="off") as client:
        body = _ask(client, "retrieval", num_candidates=3)
    return [c["text"] for c in body["candidates"]]


def test_blocklisted_retrieval_reply_is_reranked_and_counted_once(
    plain_dir: Path, unfiltered_top3: list[str], tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(unfiltered_top3[0] + "\n")
    with _client(plain_dir, safety_filter="blocklist", safety_blocklist=blocklist) as client:
        body = _ask(client, "retrieval", num_candidates=2)
        other = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        assert other.status_code == 200 and "filtered" not in other.json()
        blocked = _blocked(client)
    assert body["filtered"] == "reranked"
    assert body["response"] == unfiltered_top3[1]
    assert [c["text"] for c in body["candidates"]] == unfiltered_top3[1:3]
    labels = {"backend": "retrieval", "reason": "blocklist", "action": "reranked"}
    assert blocked == {(BLOCKED, frozenset(labels.items())): 1.0}


def test_reply_is_replaced_by_the_fallback_when_no_candidate_is_safe(
    plain_dir: Path, tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("\n".join(RESPONSES) + "\n")
    with _client(
        plain_dir,
        safety_filter="blocklist",
        safety_blocklist=blocklist,
        safety_fallback_reply=FALLBACK,
    ) as client:
        body = _ask(client, "retrieval", num_candidates=3)
        blocked = _blocked(client)
    assert body["response"] == FALLBACK and body["candidates"] == []
    assert body["filtered"] == "replaced"
    labels = {"backend": "retrieval", "reason": "blocklist", "action": "replaced"}
    assert blocked == {(BLOCKED, frozenset(labels.items())): 1.0}


def test_blocklisted_generative_reply_is_resampled_or_replaced(
    plain_dir: Path, tmp_path: Path
) -> None:
    with _client(plain_dir, safety_filter="off") as client:
        greedy = _ask(client, "generative")["response"]
    if not greedy.strip():
        pytest.skip("the random tiny generator produced an empty greedy reply")
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(greedy + "\n")
    with _client(plain_dir, safety_filter="blocklist", safety_blocklist=blocklist) as client:
        body = _ask(client, "generative")
        blocked = _blocked(client)
    assert body["filtered"] in ("reranked", "replaced")
    assert Blocklist([greedy]).find(body["response"]) is None
    labels = {"backend": "generative", "reason": "blocklist", "action": body["filtered"]}
    assert blocked == {(BLOCKED, frozenset(labels.items())): 1.0}


@pytest.mark.parametrize("backend", ["generative", "retrieval"])
def test_classifier_threshold_override_forces_replacement(
    with_classifier: Path, backend: str
) -> None:
    # Every P(unsafe) of a random classifier is above 1e-9: nothing is safe.
    with _client(with_classifier, safety_threshold=1e-9, safety_fallback_reply=FALLBACK) as client:
        body = _ask(client, backend)
        m = parse_metrics(client.get("/metrics").text)
    assert body["response"] == FALLBACK and body["filtered"] == "replaced"
    labels = {"backend": backend, "reason": "classifier", "action": "replaced"}
    assert {k: v for k, v in m.items() if k[0] == BLOCKED} == {
        (BLOCKED, frozenset(labels.items())): 1.0
    }
    # The first reply plus the re-rank candidates / samples: at least two safety checks.
    assert sample(m, "dialogue_stage_duration_seconds_count", stage="safety") >= 2


def test_classifier_near_one_threshold_passes_replies_unchanged(with_classifier: Path) -> None:
    with _client(with_classifier, safety_threshold=1 - 1e-9) as client:
        body = _ask(client, "retrieval", num_candidates=3)
        blocked = _blocked(client)
        m = parse_metrics(client.get("/metrics").text)
    assert "filtered" not in body and body["response"] == body["candidates"][0]["text"]
    assert blocked == {}
    assert sample(m, "dialogue_stage_duration_seconds_count", stage="safety") == 1


def test_auto_filter_is_both_with_a_classifier_bundle_and_off_without(
    with_classifier: Path, plain_dir: Path
) -> None:
    with _client(with_classifier) as client:
        safety = client.app.state.engine.backends["retrieval"].safety  # type: ignore[attr-defined]
        assert safety.mode == "both" and safety.blocklist.phrases == ("zzzz",)
        assert safety.threshold == pytest.approx(0.5)
    with _client(plain_dir) as client:
        assert client.app.state.engine.backends["retrieval"].safety is None  # type: ignore[attr-defined]


def test_classifier_filter_without_a_bundle_refuses_to_start(plain_dir: Path) -> None:
    with (
        pytest.raises(BundleError, match=r"SAFETY_FILTER=classifier needs a classifier bundle"),
        _client(plain_dir, safety_filter="classifier"),
    ):
        pass


def test_blocklist_filter_without_a_list_refuses_to_start(plain_dir: Path) -> None:
    with (
        pytest.raises(ValueError, match=r"SAFETY_FILTER=blocklist needs a blocklist"),
        _client(plain_dir, safety_filter="blocklist"),
    ):
        pass


def test_reload_with_a_corrupt_classifier_keeps_the_old_filter(tmp_path: Path) -> None:
    models_dir = build_tiny_classifier(build_tiny_bundles(tmp_path))
    with _client(models_dir, admin_token=TOKEN) as client:
        before = client.app.state.engine.backends["retrieval"].safety  # type: ignore[attr-defined]
        with (models_dir / "safety-classifier" / "model.safetensors").open("ab") as f:
            f.write(b"corrupt")
        resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 409
        assert resp.json()["error"]["type"] == "reload_failed"
        assert "model.safetensors checksum mismatch" in resp.json()["error"]["message"]
        assert client.app.state.engine.backends["retrieval"].safety is before  # type: ignore[attr-defined]
        assert _ask(client, "retrieval")["response"]
        shutil.rmtree(models_dir / "safety-classifier")
        build_tiny_classifier(models_dir, seed=1)
        resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200
        after = client.app.state.engine.backends["retrieval"].safety  # type: ignore[attr-defined]
        assert after is not before and after.classifier.bundle_id != before.classifier.bundle_id


# --- settings ---------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (
        "FILTER",
        "BUNDLE",
        "THRESHOLD",
        "BLOCKLIST",
        "CANDIDATES",
        "FALLBACK_REPLY",
        "RISK",
        "RISK_PHRASES",
        "RISK_REPLY",
    ):
        monkeypatch.delenv(f"DIALOGUE_SAFETY_{name}", raising=False)
    yield monkeypatch


def test_safety_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.safety_filter == "auto" and s.safety_bundle == "safety-classifier"
    assert s.safety_threshold is None and s.safety_blocklist is None
    assert s.safety_candidates == 4 and s.safety_fallback_reply
    assert s.safety_risk and s.safety_risk_phrases is None
    assert "crisis line" in s.safety_risk_reply


def test_safety_settings_parse_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DIALOGUE_SAFETY_FILTER", " Both ")
    clean_env.setenv("DIALOGUE_SAFETY_THRESHOLD", "0.7")
    clean_env.setenv("DIALOGUE_SAFETY_BLOCKLIST", "/etc/blocklist.txt")
    clean_env.setenv("DIALOGUE_SAFETY_CANDIDATES", "8")
    clean_env.setenv("DIALOGUE_SAFETY_FALLBACK_REPLY", "  no comment .  ")
    clean_env.setenv("DIALOGUE_SAFETY_RISK", "off")
    clean_env.setenv("DIALOGUE_SAFETY_RISK_PHRASES", "/etc/risk.txt")
    clean_env.setenv("DIALOGUE_SAFETY_RISK_REPLY", " please call 112 . ")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert not s.safety_risk and s.safety_risk_phrases == Path("/etc/risk.txt")
    assert s.safety_risk_reply == "please call 112 ."
    assert s.safety_filter == "both" and s.safety_threshold == 0.7
    assert s.safety_blocklist == Path("/etc/blocklist.txt") and s.safety_candidates == 8
    assert s.safety_fallback_reply == "no comment ."


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FILTER", "maybe", "safety_filter"),
        ("THRESHOLD", "1.5", "safety_threshold"),
        ("THRESHOLD", "0", "safety_threshold"),
        ("CANDIDATES", "0", "safety_candidates"),
        ("FALLBACK_REPLY", "   ", "must not be blank"),
        ("RISK_REPLY", "   ", "must not be blank"),
        ("RISK", "maybe", "safety_risk"),
    ],
)
def test_bad_safety_settings_are_refused_with_a_clear_error(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_env.setenv(f"DIALOGUE_SAFETY_{name}", value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)  # type: ignore[call-arg]


# --- out-of-distribution turns and stated risks -----------------------------------------------

RISK_REPLY = "please talk to someone you trust ."
OOD_TURNS = [
    "😂😂😂",
    "👍",
    "你好，今天天气怎么样？",
    "Привет, как дела?",
    "https://www.example.com/a",
]


def _context_stub_classifier(words: list[str] | None) -> SafetyClassifier:
    """A classifier whose model calls every pair with a non-empty context unsafe (the failure
    seen in service: an unreadable turn scored unsafe whatever the reply), with or without a
    word list (the reading rule)."""
    tokenizer = DialogueTokenizer.train([*RESPONSES, *CONTEXTS] * 3, 120, min_frequency=1)
    cfg = SafetyClassifierConfig("bag", vocab_size=tokenizer.vocab_size, d_model=4)

    class ContextStub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(5.0))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            before_sep = ids.eq(cfg.sep_id).long().cumsum(dim=1).eq(0) & ids.ne(cfg.pad_id)
            return torch.where(before_sep.any(dim=1), self.scale, -self.scale)

    return SafetyClassifier(ContextStub(), tokenizer, cfg, threshold=0.5, words=words)


def _filter(classifier: SafetyClassifier | None = None, **kwargs: Any) -> SafetyFilter:
    return SafetyFilter(
        "classifier" if classifier is not None else "blocklist",
        metrics=ServiceMetrics(),
        classifier=classifier,
        blocklist=Blocklist(["zzzz"]),
        fallback_reply=FALLBACK,
        **kwargs,
    )


def test_unreadable_turns_with_a_harmless_reply_are_not_refused() -> None:
    words = sorted({w for t in [*RESPONSES, *CONTEXTS] for w in t.split()})
    reading = _filter(_context_stub_classifier(words))
    blind = _filter(_context_stub_classifier(None))  # a bundle from before the reading rule
    replies = ["i am fine , thanks ."] * len(OOD_TURNS)
    assert blind.check(OOD_TURNS, replies) == ["classifier"] * len(OOD_TURNS)
    assert reading.check(OOD_TURNS, replies) == [None] * len(OOD_TURNS)
    # A turn the classifier can read is still judged (the stub flags every read context).
    assert reading.check(["hello , how are you ?"], ["i am fine , thanks ."]) == ["classifier"]


def test_a_reply_that_ignores_a_stated_risk_is_caught() -> None:
    safety = _filter(risk=RiskDetector.from_file(), risk_reply=RISK_REPLY)
    turns = ["I want to kill myself.", "I want to kill myself.", "hello , how are you ?"]
    replies = ["i don't know .", RISK_REPLY, "i don't know ."]
    assert safety.check(turns, replies) == ["risk", None, None]
    assert safety.fallback_for(turns[0]) == RISK_REPLY
    assert safety.fallback_for(turns[2]) == FALLBACK
    assert "risk check of" in safety.describe()
    without = _filter()
    assert without.check(turns[:1], replies[:1]) == [None] and not without.states_risk(turns[0])
    # idioms of the same statement (session 21's probe: "ending it all" went through)
    for stated in (
        "I feel like ending it all.",
        "There's no point in living.",
        "I don't want to wake up tomorrow",
    ):
        assert safety.states_risk(stated), stated
    assert not safety.states_risk("let's end the meeting , it is all for today .")
    with pytest.raises(ValueError, match="needs a risk reply"):
        _filter(risk=RiskDetector.from_file(), risk_reply=" ")


def _ask_risk(client: TestClient, backend: str) -> dict[str, Any]:
    body = {"context": ["I want to kill myself."], "backend": backend}
    resp = client.post("/respond", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_a_stated_risk_blocks_the_reply_through_the_api(plain_dir: Path) -> None:
    blocklist_settings = {"safety_filter": "blocklist", "safety_blocklist": _zzzz(plain_dir)}
    backends = ("generative", "retrieval")
    with _client(plain_dir, safety_risk_reply=RISK_REPLY, **blocklist_settings) as client:
        bodies = [_ask_risk(client, backend) for backend in backends]
        blocked = _blocked(client)
    assert [body["filtered"] for body in bodies] == ["replaced", "replaced"]
    assert blocked == {
        (BLOCKED, frozenset({"backend": b, "reason": "risk", "action": "replaced"}.items())): 1.0
        for b in backends
    }
    with _client(plain_dir, safety_risk=False, **blocklist_settings) as client:
        assert all("filtered" not in _ask_risk(client, backend) for backend in backends)


def test_a_stated_risk_gets_the_risk_reply(plain_dir: Path) -> None:
    with _client(
        plain_dir,
        safety_filter="blocklist",
        safety_blocklist=_zzzz(plain_dir),
        safety_risk_reply=RISK_REPLY,
    ) as client:
        replies = [_ask_risk(client, b)["response"] for b in ("generative", "retrieval")]
    assert replies == [RISK_REPLY, RISK_REPLY]


def test_a_missing_risk_phrase_file_refuses_to_start(plain_dir: Path, tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=r"SAFETY_RISK_PHRASES .* is not a file"),
        _client(
            plain_dir,
            safety_filter="blocklist",
            safety_blocklist=_zzzz(plain_dir),
            safety_risk_phrases=tmp_path / "absent.txt",
        ),
    ):
        pass


def _zzzz(models_dir: Path) -> Path:
    path = models_dir.parent / "zzzz-blocklist.txt"
    path.write_text("zzzz\n")
    return path


def test_a_blocked_replys_alternatives_are_cooled_and_plausible() -> None:
    """reports/safety_alternatives_small.md: nucleus samples at temperature 1 with anti-LM served
    a non-word for 75% of blocked replies; the alternatives are drawn cooler and, where the
    bundle decodes with anti-LM, among plausible tokens only."""
    from models.decoding import DecodingConfig
    from service.continuous import alternatives_config

    served = DecodingConfig(anti_lm=0.55, anti_lm_steps=3)
    alt = alternatives_config(served, 4)
    assert (alt.strategy, alt.num_return_sequences, alt.top_p) == ("sample", 4, 0.9)
    assert alt.temperature == 0.5 and alt.anti_lm_plausibility == 0.1
    assert alt.anti_lm == 0.55  # the bundle's penalty is kept, inside the plausible set
    # a cooler or stricter request stays as cool and strict; no anti-LM, no constraint
    own = served.with_overrides(strategy="sample", temperature=0.3, anti_lm_plausibility=0.2)
    assert alternatives_config(own, 2).temperature == 0.3
    assert alternatives_config(own, 2).anti_lm_plausibility == 0.2
    assert alternatives_config(DecodingConfig(), 2).anti_lm_plausibility == 0.0
