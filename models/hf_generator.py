"""A Hugging Face seq2seq or causal LM as a generator bundle: import, load, batched replies.

``python -m training import-hf --model DIR --out artifacts/NAME`` (:func:`import_hf_model`) copies a
local ``transformers`` model directory into a bundle (models/bundle.py): ``config.json``, the
tokenizer files, ``generation_config.json`` and the ``*.safetensors`` weights, each checksummed,
under a manifest with ``architecture`` ``hf-seq2seq`` or ``hf-causal``. Pickle weights
(``*.bin``, ``*.pt``, ...) never enter a bundle: a directory that has no safetensors weights is
refused (convert it with ``save_pretrained(dir, safe_serialization=True)``), and pickle files
beside safetensors ones are left out. A config that needs custom code (``auto_map``) is refused.

The manifest's ``model_config`` holds three sections:

* ``hf``: the model type, its class and where it came from;
* ``prompt`` (:class:`PromptConfig`): how turns become the model's input: the tokenizer's chat
  template when it has one (the last turn is the user's, the one before it the assistant's, and so
  on back; the oldest turn is dropped when that would make the conversation open with the
  assistant), else the turns joined by ``separator`` (a causal LM's prompt also ends with it, so the
  model continues with the reply); the last ``max_context_turns`` turns, cut from the oldest side
  to ``max_source_len`` tokens;
* ``decoding``: the default :class:`~models.decoding.DecodingConfig`.

:class:`HFGenerativeResponder` serves such a bundle with the surface the service uses from
:class:`~models.generator.GenerativeResponder` (``reply_each``, ``decoding``, ``bundle_id``,
``manifest``, ``device``): requests are batched (left padding for causal LMs, right for seq2seq)
and decoded by ``transformers``' ``generate`` with our options mapped onto it: ``greedy`` ->
``do_sample=False, num_beams=1``; ``sample`` -> ``do_sample=True`` with temperature, top-k (0 = off)
and top-p; ``beam`` -> ``num_beams=beam_size`` with ``length_penalty``; ``max_length`` ->
``max_new_tokens`` and ``min_length`` -> ``min_new_tokens`` (both count generated tokens, EOS
included, as ours do); ``no_repeat_ngram_size`` as is; ``block_adjacent_repeats`` by a logits
processor of ours (:class:`AdjacentRepeatBlocker`). The model's own generation config keeps
what is specific to it (forced BOS/EOS, decoder start), but never overrides these.

``transformers`` is an optional extra (``pip install -e '.[hf]'``), imported only here and only
when an HF bundle is imported or loaded.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from models.bundle import (
    HF_ARCHITECTURES,
    HF_CONFIG_FILE,
    MANIFEST_FILE,
    PICKLE_SUFFIXES,
    Manifest,
    bundle_error,
    verify_bundle,
    write_bundle,
)
from models.decoding import DecodingConfig, group_by_config
from models.generator import Reply
from models.responder import BundleKindError, StageObserver, observe

logger = logging.getLogger(__name__)

# Weights of other frameworks: never copied (a bundle's weights are safetensors).
OTHER_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".onnx", ".gguf", ".ot", ".tflite")
DEFAULT_MAX_SOURCE_LEN = 512


def require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Hugging Face generator bundles need the optional 'transformers' package: "
            "pip install -e '.[hf]'"
        ) from exc


@dataclass(frozen=True)
class PromptConfig:
    """How a conversation (turns, oldest first) becomes the model's input text."""

    format: Literal["chat_template", "separator"] = "separator"
    separator: str = "\n"  # between turns (and after the last one, for a causal LM)
    max_context_turns: int = 8  # the most recent turns read
    max_source_len: int = DEFAULT_MAX_SOURCE_LEN  # tokens; cut from the oldest side
    system: str | None = None  # a system message first (chat templates only)

    def __post_init__(self) -> None:
        if self.format not in ("chat_template", "separator"):
            raise ValueError(f"unknown prompt format {self.format!r}")
        if self.max_context_turns < 1 or self.max_source_len < 1:
            raise ValueError("max_context_turns and max_source_len must be >= 1")


def chat_messages(context: Sequence[str], system: str | None = None) -> list[dict[str, str]]:
    """Turns as chat messages: the last is the user's, the one before it the assistant's, ...;
    the oldest turn is dropped when the conversation would otherwise open with the assistant."""
    turns = list(context)
    if len(turns) > 1 and len(turns) % 2 == 0:
        turns = turns[1:]
    n = len(turns)
    messages = [
        {"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate(turns)
    ]
    return ([{"role": "system", "content": system}] if system else []) + messages


class AdjacentRepeatBlocker:
    """A ``generate`` logits processor for ``DecodingConfig.block_adjacent_repeats``: each row's
    previous token gets -inf once the row has generated one (``prompt_length`` leading ids, the
    prompt or the decoder start, are not the reply's)."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_length:
            scores = scores.scatter(1, input_ids[:, -1:], float("-inf"))
        return scores


def generate_kwargs(
    config: DecodingConfig, base: Any, pad_id: int, eos_id: Any, prompt_length: int = 1
) -> dict[str, Any]:
    """``generate`` arguments for our decoding config: a copy of the model's generation config
    (``base``) with every option we own set, so none of its defaults changes our decoding.
    ``prompt_length``: the ids ``generate`` passes to logits processors before the reply's first
    (the prompt for a causal LM, the decoder start for an encoder-decoder)."""
    gc = copy.deepcopy(base)
    ours: dict[str, Any] = {
        "max_new_tokens": config.max_length,
        "min_new_tokens": config.min_length,
        "max_length": None,
        "no_repeat_ngram_size": config.no_repeat_ngram_size,
        "num_return_sequences": config.num_return_sequences,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "use_cache": config.use_cache,
        "do_sample": config.strategy == "sample",
        "num_beams": config.beam_size if config.strategy == "beam" else 1,
        "length_penalty": config.length_penalty,
        "early_stopping": config.strategy == "beam",
        # sampling knobs only when sampling (generate warns about them otherwise)
        "temperature": config.temperature if config.strategy == "sample" else 1.0,
        "top_k": config.top_k if config.strategy == "sample" else None,
        "top_p": config.top_p if config.strategy == "sample" else 1.0,
    }
    if getattr(gc, "min_length", 0):  # a model's own minimum would override min_new_tokens
        ours["min_length"] = 0
    for key, value in ours.items():
        setattr(gc, key, value)
    kwargs: dict[str, Any] = {"generation_config": gc}
    if config.block_adjacent_repeats:
        kwargs["logits_processor"] = [AdjacentRepeatBlocker(prompt_length)]
    return kwargs


class HFGenerativeResponder:
    """Replies from a Hugging Face seq2seq or causal LM bundle (``hf-seq2seq`` / ``hf-causal``)."""

    kind: ClassVar[str] = "generator"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        architecture: str,
        prompt: PromptConfig,
        decoding: DecodingConfig,
        manifest: Manifest | None = None,
    ) -> None:
        if architecture not in HF_ARCHITECTURES:
            raise ValueError(f"not a Hugging Face architecture: {architecture!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.architecture = architecture
        self.seq2seq = architecture == "hf-seq2seq"
        self.prompt_config = prompt
        self.decoding = decoding
        self.manifest = manifest
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        # A causal LM continues on the right, so its batch is left-padded; any model reads the
        # most recent turns, so a long prompt loses its oldest tokens.
        tokenizer.padding_side = "right" if self.seq2seq else "left"
        tokenizer.truncation_side = "left"
        self._special_ids = set(tokenizer.all_special_ids)
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = tokenizer.eos_token_id if eos is None else eos
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    # --- identity ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id if self.manifest else "unsaved"

    @property
    def uses_chat_template(self) -> bool:
        return self.prompt_config.format == "chat_template"

    # --- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> HFGenerativeResponder:
        """Verify every checksum, then build the model and tokenizer from the bundle's own files
        (safetensors only, no custom code) on ``device`` in ``dtype`` (float32 by default; the
        service asks for float16 on CUDA). Raises BundleError; nothing is half-loaded."""
        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir)
        if manifest.kind != cls.kind or manifest.architecture not in HF_ARCHITECTURES:
            raise BundleKindError(
                f"bundle {bundle_dir}: is a {manifest.kind} bundle of architecture "
                f"{manifest.architecture or 'ours'}, not a Hugging Face generator",
                bundle_dir=bundle_dir,
                file=MANIFEST_FILE,
            )
        transformers = require_transformers()
        seq2seq = manifest.architecture == "hf-seq2seq"
        auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                bundle_dir, local_files_only=True, trust_remote_code=False
            )
            model = auto.from_pretrained(
                bundle_dir,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                dtype=dtype or torch.float32,
            )
        except Exception as exc:  # transformers raises many types; name the bundle
            raise bundle_error(
                bundle_dir,
                None,
                f"transformers cannot load this {manifest.architecture} bundle: {exc}",
            ) from exc
        model.to(device).eval()
        mc = manifest.model_config
        return cls(
            model,
            tokenizer,
            manifest.architecture,
            PromptConfig(**mc["prompt"]),
            DecodingConfig(**mc["decoding"]),
            manifest,
        )

    # --- prompts -----------------------------------------------------------------------------

    def prompt(self, context: Sequence[str]) -> str:
        """The model's input text for one conversation (turns, oldest first)."""
        p = self.prompt_config
        turns = list(context)[-p.max_context_turns :]
        if self.uses_chat_template:
            return str(
                self.tokenizer.apply_chat_template(
                    chat_messages(turns, p.system), tokenize=False, add_generation_prompt=True
                )
            )
        text = p.separator.join(turns)
        return text if self.seq2seq else text + p.separator

    def encode(self, contexts: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` of the contexts' prompts, on the device."""
        enc = self.tokenizer(
            [self.prompt(c) for c in contexts],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.prompt_config.max_source_len,
            # a chat template writes its own special tokens
            add_special_tokens=not self.uses_chat_template,
        )
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }

    # --- generation --------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_ids(self, enc: dict[str, torch.Tensor], config: DecodingConfig) -> list[list[int]]:
        """Generated ids per returned sequence (``num_return_sequences`` per row, in order):
        the prompt, the decoder start, padding and everything from the first EOS on removed."""
        tok = self.tokenizer
        out = self.model.generate(
            **enc,
            **generate_kwargs(
                config,
                self.model.generation_config,
                tok.pad_token_id,
                list(self._eos_ids) or None,
                prompt_length=1 if self.seq2seq else enc["input_ids"].shape[1],
            ),
        )
        if not self.seq2seq:
            out = out[:, enc["input_ids"].shape[1] :]
        rows: list[list[int]] = []
        for row in out.tolist():
            start = 0
            if self.seq2seq:  # the decoder start (and any forced BOS) comes first
                while start < len(row) and row[start] in self._special_ids:
                    start += 1
            kept: list[int] = []
            for t in row[start:]:
                if t in self._eos_ids:
                    break
                if t not in self._special_ids:
                    kept.append(t)
            rows.append(kept)
        return rows

    def reply_each(
        self,
        contexts: Sequence[Sequence[str]],
        configs: Sequence[DecodingConfig],
        *,
        on_stage: StageObserver | None = None,
        deadline: float | None = None,
    ) -> list[list[Reply]]:
        """For each context, the ``num_return_sequences`` replies of its own decoding config;
        contexts with equal configs decode as one padded batch (``tokenize`` and ``generate``
        seconds go to ``on_stage``), as GenerativeResponder.reply_each does (``deadline`` is
        ignored as there)."""
        out: list[list[Reply]] = [[] for _ in contexts]
        for config, rows in group_by_config(len(contexts), configs).items():
            started = time.perf_counter()
            enc = self.encode([contexts[i] for i in rows])
            started = observe(on_stage, "tokenize", started)
            ids = self.generate_ids(enc, config)
            texts = [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
            observe(on_stage, "generate", started)
            n = config.num_return_sequences
            for k, i in enumerate(rows):
                out[i] = [Reply(texts[j], ids[j]) for j in range(k * n, (k + 1) * n)]
        return out

    def close(self) -> None:
        """Nothing to release besides memory (the Generator protocol's)."""

    def respond(
        self, contexts: Sequence[Sequence[str]], decoding: DecodingConfig | None = None
    ) -> list[str]:
        """Reply text per context (``num_return_sequences`` each, flattened in order)."""
        config = decoding or self.decoding
        return [r.text for row in self.reply_each(contexts, [config] * len(contexts)) for r in row]


# --- import -------------------------------------------------------------------------------------


def max_positions(config: Any) -> int | None:
    """The model's position limit (tokens), when its config states one."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_safetensors(paths: Sequence[Path]) -> None:
    """Every weights file opens as safetensors (its header is read, not its tensors)."""
    from safetensors import SafetensorError, safe_open

    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a valid safetensors file: {exc}") from exc


def import_hf_model(
    model_dir: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    separator: str = "\n",
    prompt_format: Literal["auto", "chat_template", "separator"] = "auto",
    system: str | None = None,
    max_context_turns: int = 8,
    max_source_len: int | None = None,
    decoding: DecodingConfig | None = None,
) -> Manifest:
    """Copy a local ``transformers`` model directory into a checksummed generator bundle.

    ``prompt_format`` ``auto`` uses the tokenizer's chat template when it has one, else the
    separator. ``max_source_len`` defaults to 512 tokens, and for a causal LM to at most its
    position limit minus the reply's ``max_length``. ``decoding`` defaults to greedy, 32 tokens.
    Raises ValueError (no safetensors weights, custom code, not a seq2seq or causal LM) and
    FileNotFoundError (no config.json)."""
    transformers = require_transformers()
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    if not (model_dir / HF_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a Hugging Face model directory (no {HF_CONFIG_FILE})"
        )
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_FILE
    )
    weights = [p for p in files if p.name.endswith(".safetensors")]
    pickles = [p.name for p in files if p.name.lower().endswith(PICKLE_SUFFIXES)]
    others = [p.name for p in files if p.name.lower().endswith(OTHER_WEIGHT_SUFFIXES)]
    if not weights:
        found = (
            f" (it has {', '.join(pickles)}: pickle, which can run code when loaded)"
            if pickles
            else ""
        )
        raise ValueError(
            f"{model_dir} has no *.safetensors weights{found}; bundles take safetensors only. "
            "Convert it once, where you trust the files: AutoModel...from_pretrained(dir)"
            ".save_pretrained(new_dir, safe_serialization=True), then import new_dir"
        )
    if pickles or others:
        logger.warning(
            "%s: leaving out %s (bundles hold safetensors weights only)",
            model_dir,
            ", ".join(pickles + others),
        )
    _check_safetensors(weights)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (model_dir / s).is_file())
        if missing:
            raise ValueError(f"{index} names shards that are not there: {', '.join(missing)}")

    config = transformers.AutoConfig.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    if getattr(config, "auto_map", None):
        raise ValueError(
            f"{model_dir}/config.json needs custom model code (auto_map); only architectures "
            "transformers ships are imported"
        )
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    from transformers.models.auto import modeling_auto

    known = (
        modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
        if seq2seq
        else modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if config.model_type not in known:
        raise ValueError(
            f"{model_dir}: model type {config.model_type!r} is not a "
            f"{'seq2seq' if seq2seq else 'causal'} language model transformers knows"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ValueError(f"{model_dir}: the tokenizer has neither a pad nor an EOS token")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "auto":
        prompt_format = "chat_template" if has_template else "separator"
    elif prompt_format == "chat_template" and not has_template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template")
    decoding = decoding or DecodingConfig(max_length=32)
    limit = max_positions(config)
    source_len = max_source_len or DEFAULT_MAX_SOURCE_LEN
    if limit is not None:
        room = limit if seq2seq else limit - decoding.max_length
        if room < 1:
            raise ValueError(f"{model_dir}: {limit} positions leave no room for a prompt")
        if max_source_len is None:
            source_len = min(source_len, room)
        elif max_source_len > room:
            raise ValueError(
                f"--max-source-len {max_source_len} is beyond the model's {room} positions"
            )
    prompt = PromptConfig(
        format=prompt_format,
        separator=separator,
        max_context_turns=max_context_turns,
        max_source_len=source_len,
        system=system,
    )
    architecture = "hf-seq2seq" if seq2seq else "hf-causal"
    model_config = {
        "hf": {
            "model_type": config.model_type,
            "architectures": list(getattr(config, "architectures", None) or []),
            "max_positions": limit,
        },
        "prompt": asdict(prompt),
        "decoding": asdict(decoding),
    }
    training = {
        "method": "import-hf",
        "source": str(model_dir.resolve()),
        "transformers_version": transformers.__version__,
        "left_out": pickles + others,
    }
    kept = [p for p in files if p.name not in (*pickles, *others)]
    manifest = write_bundle(
        out_dir,
        kind="generator",
        architecture=architecture,
        name=name or out_dir.name,
        model_config=model_config,
        training=training,
        metrics={},
        state_dict=None,
        tokenizer_json=None,
        extra_files={p.name: p for p in kept},
    )
    logger.info(
        "imported %s (%s, prompt %s) as %s",
        model_dir,
        architecture,
        prompt_format,
        manifest.bundle_id,
    )
    return manifest
