"""Request and response bodies of the HTTP API (docs/design.md, "HTTP API"); unknown fields are refused."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    create_model,
)

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


def _no_lone_surrogates_before(value: Any) -> Any:
    # Before the str validation: a constrained str (min/max length) refuses a lone surrogate
    # itself, with a message that names neither the character nor where it is.
    return _no_lone_surrogates(value) if isinstance(value, str) else value


# The characters that service text normalisation (models/text.py) turns into nothing: whitespace,
# C0/C1 controls and the invisible format characters it removes. A turn made only of them would
# be empty for the model, so a turn must contain one character outside this class. The class is
# spelled with \uXXXX escapes only, so JSON Schema (ECMA-262) and Python read it alike, and
# tests/test_service_schema.py checks it against normalize_text for every code point.
_INVISIBLE_CLASS = (
    "\\u0000-\\u0020\\u007f-\\u00a0\\u00ad\\u1680\\u2000-\\u200f\\u2028-\\u202f"
    "\\u205f-\\u2064\\u3000\\ufeff"
)
VISIBLE_TEXT_PATTERN = f"[^{_INVISIBLE_CLASS}]"
"""JSON Schema ``pattern`` of a turn (unanchored: the turn contains one visible character)."""
_VISIBLE = re.compile(VISIBLE_TEXT_PATTERN)


def _visible(value: str) -> str:
    if _VISIBLE.search(value) is None:
        raise ValueError(
            "must contain a visible character (this one is empty or only whitespace, control "
            "or invisible characters)"
        )
    return value


def _turn(max_chars: int | None = None) -> Any:
    """A context turn: 1..max_chars characters, valid Unicode, one visible character at least."""
    return Annotated[
        str,
        Field(
            min_length=1,
            max_length=max_chars,
            json_schema_extra={"pattern": VISIBLE_TEXT_PATTERN},
        ),
        BeforeValidator(_no_lone_surrogates_before),
        AfterValidator(_visible),
    ]


def _json_integer(value: Any) -> Any:
    """Strict JSON integers: 5 and 5.0 (JSON Schema's integer) pass; "5", true and 5.5 do not."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be an integer, not {_json_type(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer, not a fraction")
        return int(value)
    return value


def _json_number(value: Any) -> Any:
    """Strict JSON numbers: 1 and 0.5 pass; "0.5" and true do not."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


JsonInt = Annotated[int | None, BeforeValidator(_json_integer)]
JsonNumber = Annotated[float | None, BeforeValidator(_json_number)]


# Bounds of the per-request options (the bundle's and the settings' own limits apply within them).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 5.0
MAX_ANTI_LM = (
    0.95  # models/decoding.py needs < 1: at 1 the model's own likelihood counts for nothing
)
MIN_TOP_P = 0.001  # below float32's smallest value top_p is 0 on the device and drops every token
MAX_LENGTH_BOUND = 1024
MAX_CANDIDATES_BOUND = 1000
MAX_RERANK = 16  # generate, then rank: the widest n-best a request may ask for


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseOptions(_Strict):
    """Per-request overrides. A request that names its backend may still carry the other
    backend's options: each backend applies its own and ignores the rest, so they take effect
    when the request falls back to that backend (FALLBACK=on)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"strategy": "sample", "top_p": 0.9, "temperature": 0.8}]},
    )

    # generative decoding. Every numeric option is bounded to a range that decodes: a
    # temperature of 1e-39 passes "> 0" but turns the logits into inf/nan (and the safety
    # re-sample uses it for every strategy), so the floor is MIN_TEMPERATURE; likewise MIN_TOP_P.
    # Options that depend on the loaded model are lowered to fit it, never refused, so the schema
    # alone says what is accepted.
    strategy: Literal["greedy", "sample", "beam"] | None = Field(
        default=None, description="generative: decoding strategy (default: the bundle's)"
    )
    max_length: JsonInt = Field(
        default=None,
        ge=1,
        le=MAX_LENGTH_BOUND,
        description="generative: most reply tokens; above the bundle's own limit it is lowered "
        "to that limit",
    )
    min_length: JsonInt = Field(
        default=None,
        ge=0,
        le=MAX_LENGTH_BOUND,
        description="generative: fewest reply tokens; above max_length it is lowered to it",
    )
    beam_size: JsonInt = Field(
        default=None,
        ge=1,
        le=8,
        description="generative: beams of strategy 'beam'; the other strategies ignore it",
    )
    temperature: JsonNumber = Field(
        default=None,
        ge=MIN_TEMPERATURE,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="generative: sampling temperature",
    )
    top_k: JsonInt = Field(
        default=None, ge=0, le=1000, description="generative: sampling top-k filter; 0 = off"
    )
    top_p: JsonNumber = Field(
        default=None,
        ge=MIN_TOP_P,
        le=1,
        allow_inf_nan=False,
        description="generative: nucleus sampling mass",
    )
    no_repeat_ngram_size: JsonInt = Field(
        default=None, ge=0, le=8, description="generative: n-grams a reply may not repeat; 0 = off"
    )
    block_adjacent_repeats: StrictBool | None = Field(
        default=None,
        description="generative: forbid a token right after the same token (no word twice in a "
        "row); our generators and transformers ones",
    )
    anti_lm: JsonNumber = Field(
        default=None,
        ge=0,
        le=MAX_ANTI_LM,
        allow_inf_nan=False,
        description="generative: weight of the MMI-antiLM penalty on replies that are likely "
        "whatever the context (0 = off); our generators only, others ignore it",
    )
    anti_lm_steps: JsonInt = Field(
        default=None,
        ge=0,
        le=MAX_LENGTH_BOUND,
        description="generative: the first reply tokens the anti_lm penalty applies to",
    )
    anti_lm_plausibility: JsonNumber = Field(
        default=None,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="generative: at the anti_lm positions only tokens with p >= this x the "
        "most likely token's p are eligible (0 = every token); our generators only",
    )
    rerank: JsonInt = Field(
        default=None,
        ge=0,
        le=MAX_RERANK,
        description="generative: generate, then rank: a beam search's n-best this long (n "
        "samples with strategy 'sample'), ranked by the service's retriever, the best served; "
        "0 or 1 = off (default: GENERATIVE_RERANK); ignored without a retriever loaded or for "
        "an imported or remote generator",
    )
    # retrieval
    num_candidates: JsonInt = Field(
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
            ],
            # an arm or a backend, not both (a null one does not count)
            "not": {
                "required": ["arm", "backend"],
                "properties": {"arm": {"type": "string"}, "backend": {"type": "string"}},
            },
        },
    )

    context: list[_turn()] = Field(  # type: ignore[valid-type]
        min_length=1, description="turns, oldest first"
    )
    session_id: (
        Annotated[
            str, Field(min_length=1, max_length=256), BeforeValidator(_no_lone_surrogates_before)
        ]
        | None
    ) = Field(default=None, description="keeps a conversation on one A/B arm")
    backend: BackendName | None = Field(
        default=None, description="override the A/B arm: this backend kind answers"
    )
    arm: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="override the A/B arm: this arm (GET /v1/models lists them) answers; "
        "not with backend",
    )
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
                    "request_id": "5f0c6d2e8b9a4f1d9c3e7a2b1d0e4f6a",
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
    request_id: str = Field(
        description="this request's id (also the X-Request-ID header); POST /feedback rates it"
    )
    backend: BackendName = Field(
        description="the backend that answered (differs from arm on fallback)"
    )
    arm: str = Field(
        description="the A/B arm (an arm name), or override when the request named a backend "
        "or an arm"
    )
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
    """One arm and the bundle it serves."""

    arm: str = Field(description="the arm's name")
    weight: float = Field(description="the arm's configured share of sessions")
    fallback: str | None = Field(default=None, description="the arm that answers when it cannot")
    backend: BackendName
    model: str = Field(description="bundle name@hash")
    name: str = Field(description="the bundle's name (its manifest)")
    bundle: str = Field(description="the bundle's directory name in MODELS_DIR")
    created_at: str
    device: str
    method: str | None = None


class OpenAIModel(_Strict):
    """An entry of the OpenAI-style model list (``model`` of POST /v1/chat/completions)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dialogue-service"


class ModelList(_Strict):
    """The arms and their bundles; ``object`` and ``data`` are the same list as OpenAI clients
    read it (``auto`` = the A/B test, then one entry per arm)."""

    models: list[ModelInfo]
    object: Literal["list"] = "list"
    data: list[OpenAIModel] = Field(default_factory=list)


# --- POST /feedback ------------------------------------------------------------------------------

REQUEST_ID_PATTERN = "^[A-Za-z0-9._-]{1,64}$"
"""A request id: 1-64 characters of A-Z a-z 0-9 . _ - (a client's X-Request-ID must match)."""
MAX_FEEDBACK_REASON_CHARS = 500


def _rating(value: Any) -> Any:
    """ "up", "down" or a JSON integer 1..5 (5.0 counts as 5), with one clear message otherwise."""
    if value in ("up", "down"):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return value
    raise ValueError('must be "up", "down" or an integer from 1 to 5')


RatingValue = Annotated[
    Literal["up", "down"] | Annotated[int, Field(ge=1, le=5)], BeforeValidator(_rating)
]


class FeedbackRating(_Strict):
    """A rating of one reply: its request id (the response's ``request_id``), thumbs up or down
    or 1..5 stars (1-2 down, 3 neutral, 4-5 up), and an optional reason. Rating the same
    request again replaces the earlier rating."""

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="the rated reply's request_id")
    rating: RatingValue = Field(description='"up", "down" or 1..5')
    reason: (
        Annotated[
            str,
            Field(max_length=MAX_FEEDBACK_REASON_CHARS),
            BeforeValidator(_no_lone_surrogates_before),
        ]
        | None
    ) = Field(default=None, description="why (free text, kept in the feedback log)")


class SessionEnd(_Strict):
    """The end of a conversation: its session_id and, optionally, how many turns it had."""

    session_id: Annotated[
        str, Field(min_length=1, max_length=256), BeforeValidator(_no_lone_surrogates_before)
    ]
    event: Literal["end"]
    turns: JsonInt = Field(default=None, ge=0, le=100_000, description="turns in the session")


def _feedback_kind(value: Any) -> str:
    return "session_end" if isinstance(value, dict) and "event" in value else "rating"


FeedbackRequest = Annotated[
    Annotated[FeedbackRating, Tag("rating")] | Annotated[SessionEnd, Tag("session_end")],
    Discriminator(_feedback_kind),
]
"""A rating, or (with ``event``) a session end; validation errors name which one was read."""


class FeedbackResponse(_Strict):
    """What was recorded: a rating (``matched``: the request id was answered by this process;
    ``replaced``: it replaced an earlier rating) or a session end."""

    recorded: Literal["rating", "session_end"]
    request_id: str | None = None
    matched: bool | None = None
    replaced: bool | None = None


class Health(_Strict):
    status: str
    backends: list[BackendName] = Field(default_factory=list)


def request_model(
    *,
    max_turns: int,
    max_turn_chars: int,
    max_candidates: int,
    request_chars: int,
    arms: list[str] | None = None,
) -> type[RespondRequest]:
    """``RespondRequest`` with this service's limits in it, so that its OpenAPI schema states
    every limit the service enforces and validation refuses what the schema refuses (422)."""
    total = (
        ""
        if request_chars >= max_turns * max_turn_chars
        else f"; at most {request_chars} characters over all turns (else 413)"
    )
    options = create_model(
        "ResponseOptions",
        __base__=ResponseOptions,
        __doc__=ResponseOptions.__doc__,
        num_candidates=(
            JsonInt,
            Field(
                default=None,
                ge=1,
                le=max_candidates,
                description="retrieval: candidates returned (at most MAX_CANDIDATES)",
            ),
        ),
    )
    turns: Any = list[_turn(max_turn_chars)]  # type: ignore[misc]
    options_field: Any = options | None
    arm_fields: dict[str, Any] = {}
    if arms:
        arm_field: Any = Literal[tuple(sorted(arms))] | None  # sorted: typing caches Literals
        arm_fields["arm"] = (
            arm_field,
            Field(
                default=None, description="override the A/B arm: this arm answers; not with backend"
            ),
        )
    return create_model(
        "RespondRequest",
        __base__=RespondRequest,
        __doc__=RespondRequest.__doc__,
        **arm_fields,
        context=(
            turns,
            Field(
                min_length=1,
                max_length=max_turns,
                description=f"turns, oldest first: 1..{max_turns} turns of 1..{max_turn_chars} "
                f"characters, each with a visible character{total}",
            ),
        ),
        options=(options_field, None),
    )
