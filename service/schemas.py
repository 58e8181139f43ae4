"""Request and response bodies of the HTTP API (DESIGN.md, "HTTP API"); unknown fields are refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BackendName = Literal["generative", "retrieval"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseOptions(_Strict):
    """Per-request overrides; each backend uses the ones that apply to it and ignores the rest."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"strategy": "sample", "top_p": 0.9, "temperature": 0.8}]},
    )

    # generative decoding (bounded by the bundle's own defaults, see GenerativeBackend.prepare)
    strategy: Literal["greedy", "sample", "beam"] | None = None
    max_length: int | None = Field(
        default=None, ge=1, description="at most the bundle's max_length"
    )
    min_length: int | None = Field(default=None, ge=0)
    beam_size: int | None = Field(default=None, ge=1, le=8)
    temperature: float | None = Field(default=None, gt=0, le=5)
    top_k: int | None = Field(
        default=None, ge=0, le=1000, description="sampling top-k filter; 0 = off"
    )
    top_p: float | None = Field(default=None, gt=0, le=1)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=8)
    # retrieval
    num_candidates: int | None = Field(
        default=None, ge=1, description="retrieval: candidates returned (at most MAX_CANDIDATES)"
    )


class RespondRequest(_Strict):
    """A conversation to answer, oldest turn first."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "context": ["hello , how are you ?", "fine , thanks . and you ?"],
                    "session_id": "conversation-42",
                },
                {
                    "context": ["what time is it ?"],
                    "backend": "retrieval",
                    "options": {"num_candidates": 3},
                },
            ]
        },
    )

    context: list[str] = Field(min_length=1, description="turns, oldest first")
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="keeps a conversation on one A/B arm",
    )
    backend: BackendName | None = Field(default=None, description="override the A/B arm")
    options: ResponseOptions | None = None


class Candidate(_Strict):
    text: str
    score: float


class RespondResponse(_Strict):
    """The reply, which backend produced it and for which A/B arm."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "response": "i am fine , thanks .",
                    "backend": "retrieval",
                    "arm": "retrieval",
                    "model": "retriever-g2r-dm@1a2b3c4d",
                    "latency_ms": 3.2,
                    "candidates": [{"text": "i am fine , thanks .", "score": 12.5}],
                }
            ]
        },
    )

    response: str
    backend: BackendName = Field(
        description="the backend that answered (differs from arm on fallback)"
    )
    arm: str = Field(description="the A/B arm: generative, retrieval, or override")
    model: str = Field(description="bundle name@hash")
    latency_ms: float
    candidates: list[Candidate] | None = None
    filtered: Literal["reranked", "replaced"] | None = Field(
        default=None,
        description="present when the safety filter blocked the model's first reply: 'reranked' "
        "(a safe candidate answered) or 'replaced' (the fallback reply answered)",
    )


class ErrorDetail(_Strict):
    type: str
    message: str


class ErrorBody(_Strict):
    """Every error response: ``{"error": {"type", "message"}}``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"error": {"type": "overloaded", "message": "the retrieval queue is full"}}
            ]
        },
    )

    error: ErrorDetail


class ModelInfo(_Strict):
    backend: BackendName
    model: str = Field(description="bundle name@hash")
    name: str
    path: str
    created_at: str
    device: str
    method: str | None = None


class ModelList(_Strict):
    models: list[ModelInfo]


class Health(_Strict):
    status: str
    backends: list[BackendName] = Field(default_factory=list)
