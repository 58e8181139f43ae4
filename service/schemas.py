"""Request and response bodies of the HTTP API (DESIGN.md, "HTTP API"); unknown fields are refused."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

BackendName = Literal["generative", "retrieval"]

# JSON may spell a lone UTF-16 surrogate ("\\ud800"); Python keeps it in the str, and it cannot
# be encoded as UTF-8, so the tokenizer (and any log line or reply echoing it) would fail later.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_lone_surrogates(value: str) -> str:
    found = _LONE_SURROGATE.search(value)
    if found is not None:
        raise ValueError(
            f"contains a lone UTF-16 surrogate (U+{ord(found.group()):04X}) at character "
            f"{found.start()}; text must be valid Unicode"
        )
    return value


Text = Annotated[str, AfterValidator(_no_lone_surrogates)]
"""A string field of a request: valid Unicode (no lone surrogates)."""


# Bounds of the per-request options (the bundle's and the settings' own limits apply within them).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 5.0
MIN_TOP_P = 0.001  # below float32's smallest value top_p is 0 on the device and drops every token
MAX_LENGTH_BOUND = 1024
MAX_CANDIDATES_BOUND = 1000


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
    # Every numeric option is bounded to a range that decodes: a temperature of 1e-39 passes
    # "> 0" but turns the logits into inf/nan (and the safety re-sample uses it for every
    # strategy), so the floor is MIN_TEMPERATURE; likewise MIN_TOP_P.
    max_length: int | None = Field(
        default=None, ge=1, le=MAX_LENGTH_BOUND, description="at most the bundle's max_length"
    )
    min_length: int | None = Field(default=None, ge=0, le=MAX_LENGTH_BOUND)
    beam_size: int | None = Field(default=None, ge=1, le=8)
    temperature: float | None = Field(
        default=None, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False
    )
    top_k: int | None = Field(
        default=None, ge=0, le=1000, description="sampling top-k filter; 0 = off"
    )
    top_p: float | None = Field(default=None, ge=MIN_TOP_P, le=1, allow_inf_nan=False)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=8)
    # retrieval
    num_candidates: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CANDIDATES_BOUND,
        description="retrieval: candidates returned (at most MAX_CANDIDATES)",
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

    context: list[Text] = Field(min_length=1, description="turns, oldest first")
    session_id: Text | None = Field(
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
