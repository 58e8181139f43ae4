"""``POST /v1/chat/completions``: the OpenAI chat API (non-streaming) over the same engine as
POST /respond, so chat frontends and OpenAI SDKs talk to the service unchanged.

* ``messages``: user and assistant turns, oldest first, become the context (the last
  ``MAX_TURNS`` of them; a message whose content is a list of parts gives one turn per text part;
  empty or whitespace-only turns are skipped); ``system`` and ``developer`` messages are
  accepted and ignored (the models were not trained with instructions). At least one user or
  assistant message must carry text.
* ``model``: ``auto`` = the A/B test (sticky per ``user``); an arm's name = that arm; ``generative``
  or ``retrieval`` (when no arm has that name) = that backend kind. Anything else is a 404
  ``model_not_found``. ``GET /v1/models`` lists them.
* ``user``: the session id (the A/B arm is sticky per user, as per ``session_id``).
* ``stream: true`` is refused (400): answers are one reply, not a stream. ``n`` must be 1.
  Sampling parameters (``temperature``, ``top_p``, ``max_tokens``, ``stop``, penalties, ``seed``,
  ...) are accepted and ignored: each arm answers with its own configured decoding, so client
  defaults do not skew an A/B test. Fields the service does not know (``tools``,
  ``tool_choice``, ``functions``, ``audio``, ...) are a 400 that names them.
* The reply: ``id`` = the request id (also ``X-Request-ID``; POST /feedback rates it),
  ``model`` = the arm that answered, ``system_fingerprint`` = its bundle id, ``usage`` = tokens
  of the kept turns and of the reply by the answering bundle's tokenizer.

Limits, the deadline, the safety filter, metrics and the exposure log are those of POST /respond.
Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (service/errors.py).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    create_model,
)

from service.engine import DialogueEngine, Served
from service.errors import InvalidRequest, ModelNotFound
from service.http import received_at, request_id, require_json
from service.routing import BACKENDS
from service.schemas import (
    VISIBLE_TEXT_PATTERN,
    RespondRequest,
    _json_integer,
    _json_number,
    _no_lone_surrogates_before,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

AUTO_MODEL = "auto"
_VISIBLE = re.compile(VISIBLE_TEXT_PATTERN)
_TURN_ROLES = ("user", "assistant")

# JSON Schema of "a user or assistant message with text": the schema states what the service
# needs, so a request it would refuse for having no text is one the schema forbids.
_VISIBLE_STRING: dict[str, Any] = {"type": "string", "pattern": VISIBLE_TEXT_PATTERN}
_USABLE_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": list(_TURN_ROLES)},
        "content": {
            "anyOf": [
                _VISIBLE_STRING,
                {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": _VISIBLE_STRING},
                    },
                },
            ]
        },
    },
}


def _no_streaming(value: Any) -> Any:
    if value is True:
        raise ValueError(
            "streaming is not supported: this service answers with one message; "
            "leave stream out or set it to false"
        )
    if value is not None and value is not False:  # strict: 0 or "false" is no boolean
        raise ValueError("stream must be false (or left out)")
    return value


def _only_one(value: Any) -> Any:
    # JSON's 1 and 1.0 are the same number; true is not a number
    if value is not None and (isinstance(value, bool) or value != 1):
        raise ValueError("only one choice is supported: n must be 1 (or left out)")
    return 1 if value is not None else None


class _Open(BaseModel):
    """OpenAI's objects as this service reads them: the fields it knows (some accepted and
    ignored), nothing else (a field it does not know, such as ``tools``, is a 400 naming it)."""

    model_config = ConfigDict(extra="forbid")


_Number = Annotated[
    Annotated[float, Field(allow_inf_nan=False)] | None, BeforeValidator(_json_number)
]
_Integer = Annotated[int | None, BeforeValidator(_json_integer)]


class ResponseFormat(_Open):
    type: Literal["text"] = Field(description="only text")


def _text(max_chars: int) -> Any:
    return Annotated[str, Field(max_length=max_chars), BeforeValidator(_no_lone_surrogates_before)]


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, description="accepted and ignored")
    refusal: str | None = Field(default=None, description="accepted and ignored")


class ChatRequest(_Open):
    """An OpenAI chat completion request (the fields this service reads)."""

    model: str = Field(description="auto (the A/B test), an arm's name, or a backend kind")
    messages: list[ChatMessage] = Field(
        min_length=1,
        description="the conversation, oldest first; user and assistant turns are the context",
        json_schema_extra={"contains": _USABLE_MESSAGE},
    )
    user: (
        Annotated[
            str, Field(min_length=1, max_length=256), BeforeValidator(_no_lone_surrogates_before)
        ]
        | None
    ) = Field(default=None, description="the session id: keeps a conversation on one A/B arm")
    stream: Annotated[Literal[False] | None, BeforeValidator(_no_streaming)] = Field(
        default=None, description="only false: streaming is not supported"
    )
    n: Annotated[Literal[1] | None, BeforeValidator(_only_one)] = Field(
        default=None, description="only 1"
    )
    # Accepted and ignored: each arm answers with its own configured decoding, so a client's
    # defaults do not change what an A/B test compares.
    temperature: _Number = None
    top_p: _Number = None
    max_tokens: _Integer = None
    max_completion_tokens: _Integer = None
    presence_penalty: _Number = None
    frequency_penalty: _Number = None
    seed: _Integer = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Annotated[int, BeforeValidator(_json_integer)]] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: _Integer = None
    stream_options: dict[str, StrictBool] | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    parallel_tool_calls: StrictBool | None = None
    service_tier: str | None = None

    def turns(self) -> list[str]:
        """The user and assistant turns with text, oldest first (one per text part)."""
        out: list[str] = []
        for message in self.messages:
            if message.role not in _TURN_ROLES or message.content is None:
                continue
            texts = (
                [message.content]
                if isinstance(message.content, str)
                else [part.text for part in message.content]
            )
            out += [t for t in texts if _has_text(t)]
        return out


def _has_text(text: str) -> bool:
    return _VISIBLE.search(text) is not None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's chat.completion object."""

    id: str = Field(description="the request id (X-Request-ID); POST /feedback rates it")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="the arm that answered")
    system_fingerprint: str = Field(description="the bundle that answered (name@hash)")
    choices: list[ChatChoice]
    usage: Usage | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error body."""

    error: OpenAIErrorDetail


_ERRORS = {
    400: "invalid request: not JSON, or it breaks this schema (streaming, n > 1, no text)",
    404: "model_not_found: the model is neither auto, an arm nor a backend kind",
    413: "the body, a turn or the kept turns are over the service's limits",
    415: "the body is not sent as JSON (Content-Type: application/json)",
    429: "overloaded: the backend's queue is full; retry after Retry-After seconds",
    503: "not ready, or the backend failed or is not loaded (and no fallback answered)",
    504: "no answer within the request deadline (REQUEST_TIMEOUT_S, end to end)",
}


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    return "parts" if isinstance(value, list) else None


def chat_request_model(max_turn_chars: int, models: list[str]) -> type[ChatRequest]:
    """ChatRequest with this service's turn limit and models stated in its schema (any other
    model is a 404, as OpenAI answers)."""
    text = _text(max_turn_chars)
    part = create_model("TextPart", __base__=TextPart, text=(text, ...))
    # A string or a list of parts: told apart by type, so an error names one of them
    # (messages.0.content.text / .parts), not every member of a union.
    content: Any = (
        Annotated[
            Annotated[text, Tag("text")] | Annotated[list[part], Tag("parts")],  # type: ignore[valid-type]
            Discriminator(
                _content_kind,
                custom_error_type="invalid_content",
                custom_error_message="content must be a string or a list of text parts",
            ),
        ]
        | None
    )
    message = create_model("ChatMessage", __base__=ChatMessage, content=(content, None))
    messages: Any = list[message]  # type: ignore[valid-type]
    return create_model(
        "ChatRequest",
        __base__=ChatRequest,
        __doc__=ChatRequest.__doc__,
        model=(
            str,
            Field(
                description="auto (the A/B test), an arm's name, or a backend kind; any other "
                "is a 404",
                json_schema_extra={"enum": cast(Any, models)},
            ),
        ),
        messages=(
            messages,
            Field(
                min_length=1,
                description="the conversation, oldest first; user and assistant turns are the "
                f"context (the last turns that fit; each at most {max_turn_chars} characters)",
                json_schema_extra={"contains": _USABLE_MESSAGE},
            ),
        ),
    )


def build_openai_router(settings: Settings, engine: DialogueEngine) -> APIRouter:
    """POST /v1/chat/completions."""
    router = APIRouter()
    arms = set(settings.arm_specs())
    models = [AUTO_MODEL, *settings.arm_specs(), *(b for b in BACKENDS if b not in arms)]
    body_model = chat_request_model(settings.max_turn_chars, models)

    async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletion:
        """Answer the conversation as OpenAI's chat completions API does (not streaming)."""
        turns = body.turns()
        if not turns:  # the schema's "contains" says so too
            raise InvalidRequest("messages: no user or assistant message carries text")
        arm = backend = None
        if body.model in arms:
            arm = body.model
        elif body.model in BACKENDS:
            backend = body.model
        elif body.model != AUTO_MODEL:
            choices = ", ".join([AUTO_MODEL, *sorted(arms)])
            raise ModelNotFound(f"The model `{body.model}` does not exist; models: {choices}")
        try:
            respond = RespondRequest(
                context=turns[-settings.max_turns :],
                session_id=body.user,
                arm=arm,
                backend=backend,  # type: ignore[arg-type]
            )
        except ValidationError as exc:  # not expected: the schema held every field already
            raise InvalidRequest(f"messages: {exc.errors()[0].get('msg', 'invalid')}") from None
        served = await engine.answer(
            respond,
            received=received_at(request),
            request_id=request_id(request),
            endpoint="chat.completions",
        )
        return ChatCompletion(
            id=served.response.request_id,
            created=int(time.time()),
            model=served.variant,
            system_fingerprint=served.response.model,
            choices=[
                ChatChoice(
                    message=ChatCompletionMessage(content=served.response.response),
                    finish_reason="length" if served.truncated else "stop",
                )
            ],
            usage=_usage(served, respond.context),
        )

    chat_completions.__annotations__["body"] = body_model
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": OpenAIErrorBody, "description": text} for code, text in _ERRORS.items()
    }
    responses[429]["headers"] = {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
    }
    router.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=responses,
        dependencies=[Depends(require_json)],
        tags=["OpenAI-compatible"],
    )(chat_completions)
    return router


def _usage(served: Served, turns: list[str]) -> Usage | None:
    """Token counts by the answering bundle's tokenizer; None when it has none to ask."""
    tokenizer = getattr(served.backend.responder, "tokenizer", None)
    encode = getattr(tokenizer, "encode_texts", None)
    if encode is None:
        return None
    try:
        prompt = sum(len(ids) for ids in encode(turns))
        completion = (
            served.generated_tokens
            if served.generated_tokens is not None and served.response.filtered is None
            else len(encode([served.response.response])[0])
        )
    except Exception:  # a tokenizer that cannot count must not fail an answered request
        logger.exception("could not count tokens for usage")
        return None
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
