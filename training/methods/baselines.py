"""The negative-training baselines of the ND paper (Li et al. 2022, section 3.3 and appendix B).

* **NT** (He & Glass 2020, Algorithm 2): greedy replies to the training inputs; a reply whose
  frequency over the current and the last 200 mini-batches exceeds ``r_thres`` is a negative
  example, its log-likelihood is minimised next to the MLE loss (eq. 4), with the negative
  gradient of ``<EOS>`` scaled by 0.1 (frequent word avoiding, section 4.3).
* **UL** (Li et al. 2020a, "Don't Say That!", vocabulary unlikelihood): tokens that the model's
  greedy replies use more often than the human responses are made unlikely with a weight
  ``beta = p_model log(p_model / p_human)``; ``L = L_mle + alpha * L_ul`` with alpha = 1000 (ND).

ND appendix B: "Both NT and UL are refined on the well-trained Standard model", so both jobs here
start from a standard generator bundle. Objectives carry state (frequency windows) that a resumed
run needs: they expose ``state_dict()`` / ``load_state_dict()`` for the trainer's checkpoint.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from models.bundle import Manifest
from models.decoding import DecodingConfig, generate
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from training.core.data import DialogueExample
from training.core.distributed import DistContext
from training.core.generator import (
    PairSet,
    Seq2SeqBatch,
    fine_tune_overrides,
    run_generator_training,
    save_generator,
)
from training.core.losses import (
    LABEL_SMOOTHING,
    frequent_word_weights,
    log_one_minus,
    smoothed_nll,
    token_log_probs,
)
from training.core.trainer import Objective
from training.presets import Preset

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


# --- frequency windows ------------------------------------------------------------------------


class _BatchWindow(Generic[K]):
    """Counts of keys over the current and the last ``window_batches`` mini-batches."""

    def __init__(self, window_batches: int) -> None:
        assert window_batches >= 0, f"window_batches must be >= 0, got {window_batches}"
        self.window_batches = window_batches
        self._batches: deque[Counter[K]] = deque()
        self._total: Counter[K] = Counter()
        self._size = 0  # keys counted in the window, with multiplicity

    def _add(self, counts: Counter[K]) -> None:
        self._batches.append(counts)
        self._total.update(counts)
        self._size += sum(counts.values())
        while len(self._batches) > self.window_batches + 1:  # current + the last window_batches
            for key, n in self._batches.popleft().items():
                left = self._total[key] - n
                if left:
                    self._total[key] = left
                else:
                    del self._total[key]
                self._size -= n

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def __len__(self) -> int:
        """Keys in the window, counted with multiplicity."""
        return self._size

    def count(self, key: K) -> int:
        return self._total.get(key, 0)

    def _encode(self, key: K) -> Any:
        return key

    def _decode(self, data: Any) -> K:
        return cast(K, data)

    def state_dict(self) -> dict[str, Any]:
        """Plain lists (JSON- and ``torch.save``-friendly), oldest batch first."""
        return {
            "window_batches": self.window_batches,
            "batches": [[[self._encode(k), n] for k, n in b.items()] for b in self._batches],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window_batches = int(state["window_batches"])
        self._batches.clear()
        self._total.clear()
        self._size = 0
        for batch in state["batches"]:
            self._add(Counter({self._decode(k): int(n) for k, n in batch}))


class ResponseFrequencyWindow(_BatchWindow[tuple[int, ...]]):
    """Reply frequencies over the current and the last ``window_batches`` mini-batches.

    He & Glass (2020), section 3.3: "The frequency statistics are calculated using the current
    and the last 200 mini-batches." Adding batch ``n`` drops batch ``n - window_batches - 1``.
    """

    def __init__(self, window_batches: int = 200) -> None:
        super().__init__(window_batches)

    def add_batch(self, responses: Iterable[Sequence[int]]) -> None:
        self._add(Counter(tuple(r) for r in responses))

    def ratio(self, response: Sequence[int]) -> float:
        """Share of the window's replies equal to ``response`` (0.0 when empty)."""
        return self.count(tuple(response)) / self._size if self._size else 0.0

    def max_ratio(self) -> float:
        """He & Glass's max-ratio over the window: share of the most frequent reply."""
        return max(self._total.values()) / self._size if self._size else 0.0

    def _encode(self, key: tuple[int, ...]) -> Any:
        return list(key)

    def _decode(self, data: Any) -> tuple[int, ...]:
        return tuple(int(t) for t in data)


class TokenFrequencyWindow(_BatchWindow[int]):
    """Token counts over the current and the last ``window_batches`` mini-batches (for UL)."""

    def __init__(self, window_batches: int = 32) -> None:
        super().__init__(window_batches)

    def add_batch(self, tokens: Iterable[int]) -> None:
        self._add(Counter(int(t) for t in tokens))

    def counts(self, vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
        """Counts as a dense (V,) float tensor."""
        out = torch.zeros(vocab_size)
        for token, n in self._total.items():
            out[token] = n
        return out.to(device)


# --- loss math (pure functions) ---------------------------------------------------------------


def frequent_token_penalty(
    model_counts: Tensor, human_counts: Tensor, threshold: float = 1e-3
) -> Tensor:
    """Li et al. (2020a) vocabulary-unlikelihood weights ``beta`` (V,) from token counts (V,).

    ``beta(k) = p_model(k) * log(p_model(k) / p_human(k))`` where the model over-uses ``k``
    (``p_model > p_human > 0``), else 0; weights not above ``threshold`` are dropped (0). This is
    the ``kldiv`` weighting of the authors' released code (ParlAI projects/dialogue_unlikelihood).
    """
    p_model = model_counts.double() / model_counts.sum().clamp_min(1)
    p_human = human_counts.double() / human_counts.sum().clamp_min(1)
    over = (p_model > p_human) & (p_human > 0)
    beta = torch.where(over, p_model * (p_model.log() - p_human.log()), 0.0)
    return torch.where(beta > threshold, beta, 0.0).float()


def token_unlikelihood_loss(
    logits: Tensor, tokens: Tensor, penalty: Tensor, pad_id: int, eps: float = 1e-6
) -> Tensor:
    """``sum_t beta(y_t) * -log(1 - p(y_t | y_<t, x))`` over penalised positions, divided by their
    number (Li et al. 2020a, Welleck et al. 2020 eq. 4; ND eq. 2). logits (B, T, V), tokens (B, T).

    ``1 - p`` is clamped at ``eps`` so a token the model is sure of gives a finite loss.
    """
    weights = penalty.to(logits.device)[tokens] * tokens.ne(pad_id)  # (B, T)
    n = int(weights.gt(0).sum())
    if n == 0:
        return logits.new_zeros((), dtype=torch.float32)
    p = logits.float().softmax(dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return -(log_one_minus(p, eps) * weights).sum() / n


# --- shared plumbing --------------------------------------------------------------------------


def greedy_replies(model: nn.Module, src: Tensor, decoding: DecodingConfig) -> list[list[int]]:
    """The model's replies to ``src`` without gradients and without dropout (eval mode), the
    training mode restored afterwards. Unwraps DistributedDataParallel."""
    core = cast(Seq2SeqTransformer, getattr(model, "module", model))
    was_training = core.training
    core.eval()
    try:
        return generate(core, src, decoding).tokens
    finally:
        core.train(was_training)


def _gather_across_ranks(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (identity without a process group), so
    all ranks keep identical frequency windows and rank 0's checkpoint fits them all."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list[list[T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in (part or [])]


def _pad_cat(a: Tensor, b: Tensor, pad_id: int) -> Tensor:
    """Stack (B1, T1) over (B2, T2), right-padding to max(T1, T2)."""
    width = max(a.size(1), b.size(1))
    return torch.cat(
        [
            F.pad(a, (0, width - a.size(1)), value=pad_id),
            F.pad(b, (0, width - b.size(1)), value=pad_id),
        ]
    )


def _joint_logits(
    model: nn.Module, batch: Seq2SeqBatch, extra_src: Tensor, extra_in: Tensor, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Logits of the gold pairs and of extra (source, decoder input) rows from ONE forward pass
    (two forwards before one backward would break DistributedDataParallel). Right-padding the
    shorter targets changes nothing: decoder self-attention is causal."""
    b, t = batch.tgt_in.shape
    logits = model(
        torch.cat([batch.src, extra_src]), _pad_cat(batch.tgt_in, extra_in, pad_id)
    ).logits
    return logits[:b, :t], logits[b:, : extra_in.size(1)]


# --- objectives -------------------------------------------------------------------------------


class NegativeTrainingObjective:
    """He & Glass (2020) Algorithm 2 in mini-batches: ``L = L_neg + lambda_pos * L_mle`` (eq. 4).

    Per batch: greedy replies to the batch's sources join the window; a reply whose ratio in the
    window exceeds ``r_thres`` is a negative example. With ``D`` gold target tokens in the batch,

        L_neg = (1/D) sum_{negatives} sum_t w[y_t] log P(y_t | y_<t, x),  w[EOS] = eos_weight
        L_mle = token-mean (label-smoothed) cross-entropy of the gold responses (ND eq. 1)

    Both sums share the denominator, so each example weighs its negative against its positive
    update as Alg. 2 does (sequence log-likelihoods, lambda_pos = 1), whatever the number of
    negatives. Alg. 2 puts the positive update inside ``if r > r_thres``; here every gold pair gets
    it ("positive training is also needed here for the model to retain its original performance").
    Negatives start once the window holds ``1 / r_thres`` replies: before that a reply seen once
    is already "frequent", so the whole first batch would be penalised.
    """

    def __init__(
        self,
        pad_id: int,
        eos_id: int,
        bos_id: int,
        *,
        r_thres: float = 0.01,  # He & Glass 4.3 / ND appendix B: 1%
        lambda_pos: float = 1.0,  # He & Glass 4.3 / ND appendix B: 1
        window_batches: int = 200,  # He & Glass 3.3: the current and the last 200 mini-batches
        eos_weight: float = 0.1,  # He & Glass 4.3: FWA scales EOS's negative gradient by 0.1
        label_smoothing: float = LABEL_SMOOTHING,
        max_decode_len: int = 32,  # greedy reply length cap, EOS included
        no_repeat_ngram_size: int = 0,  # decode as the bundle will (0 = off)
    ) -> None:
        assert 0 < r_thres < 1, f"r_thres must be in (0, 1), got {r_thres}"
        self.pad_id, self.eos_id, self.bos_id = pad_id, eos_id, bos_id
        self.r_thres = r_thres
        self.lambda_pos = lambda_pos
        self.eos_weight = eos_weight
        self.label_smoothing = label_smoothing
        self.decoding = DecodingConfig(
            strategy="greedy", max_length=max_decode_len, no_repeat_ngram_size=no_repeat_ngram_size
        )
        self.window = ResponseFrequencyWindow(window_batches)

    def decode(self, model: nn.Module, src: Tensor) -> list[list[int]]:
        return greedy_replies(model, src, self.decoding)

    def _negative_io(self, replies: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """Decoder input/target rows; a reply cut at ``max_length`` has no EOS to penalise."""
        ins, outs = [], []
        for r in replies:
            ended = len(r) < self.decoding.max_length
            ins.append([self.bos_id, *r] if ended else [self.bos_id, *r[:-1]])
            outs.append([*r, self.eos_id] if ended else r)
        width = max(len(x) for x in ins)
        pad = [[*x, *[self.pad_id] * (width - len(x))] for x in (*ins, *outs)]
        rows = torch.tensor(pad, dtype=torch.long, device=device)
        return rows[: len(ins)], rows[len(ins) :]

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        replies = self.decode(model, batch.src)
        everyone: list[list[int]] = _gather_across_ranks(replies)
        self.window.add_batch(everyone)
        active = len(self.window) >= 1.0 / self.r_thres
        neg = [i for i, r in enumerate(replies) if active and self.window.ratio(r) > self.r_thres]
        if neg:
            neg_in, neg_out = self._negative_io([replies[i] for i in neg], batch.src.device)
            gold_logits, neg_logits = _joint_logits(
                model, batch, batch.src[neg], neg_in, self.pad_id
            )
        else:
            gold_logits = model(batch.src, batch.tgt_in).logits
        mle = smoothed_nll(gold_logits, batch.tgt_out, self.pad_id, self.label_smoothing)
        loss = self.lambda_pos * mle
        neg_loss = 0.0
        if neg:
            # He & Glass 4.3, frequent word avoiding: EOS's negative gradient scaled by eos_weight
            weights = frequent_word_weights(neg_out, self.pad_id, {self.eos_id: self.eos_weight})
            log_p, _ = token_log_probs(neg_logits, neg_out, self.pad_id)  # (B, T)
            n_gold = batch.tgt_out.ne(self.pad_id).sum().clamp_min(1)
            l_neg = (log_p * weights).sum(dim=1).sum() / n_gold
            loss = l_neg + loss
            neg_loss = l_neg.item()
        return loss, {
            "nt_neg_examples": float(len(neg)),
            "nt_neg_loss": neg_loss,
            "nt_max_ratio": self.window.max_ratio(),
            "nt_mle_loss": mle.item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state["window"])


class UnlikelihoodObjective:
    """Li et al. (2020a) vocabulary unlikelihood: ``L = L_mle + alpha * L_ul``.

    Per batch: the model's greedy replies (eval mode, as the authors' code generates) and the gold
    responses feed two token windows (EOS left out: it is no "word", and penalising it only
    lengthens replies, cf. He & Glass's FWA). Once the windows hold the current and the last
    ``window_batches`` batches (the authors' warm-up: plain MLE until the queue is full), tokens
    the model over-uses get ``beta`` (:func:`frequent_token_penalty`), and
    :func:`token_unlikelihood_loss` applies at the positions of the replies (teacher-forced on the
    replies) where those tokens were generated. The windows slide (the released code lets its
    training counts grow without bound). alpha = 1000: the ND paper's pick from {1, 10, 100, 1000}.
    """

    def __init__(
        self,
        pad_id: int,
        eos_id: int,
        bos_id: int,
        vocab_size: int,
        *,
        alpha: float = 1000.0,  # ND appendix B
        window_batches: int = 32,  # the released code's --queue-size
        threshold: float = 1e-3,  # the released code's --threshold on beta
        label_smoothing: float = LABEL_SMOOTHING,
        max_decode_len: int = 32,
        no_repeat_ngram_size: int = 0,
    ) -> None:
        self.pad_id, self.eos_id, self.bos_id = pad_id, eos_id, bos_id
        self.vocab_size = vocab_size
        self.alpha = alpha
        self.threshold = threshold
        self.label_smoothing = label_smoothing
        self.decoding = DecodingConfig(
            strategy="greedy", max_length=max_decode_len, no_repeat_ngram_size=no_repeat_ngram_size
        )
        self.model_tokens = TokenFrequencyWindow(window_batches)
        self.human_tokens = TokenFrequencyWindow(window_batches)

    def decode(self, model: nn.Module, src: Tensor) -> list[list[int]]:
        return greedy_replies(model, src, self.decoding)

    def penalty(self, device: torch.device | str = "cpu") -> Tensor:
        """Current ``beta`` (V,); all zero during the warm-up."""
        if self.model_tokens.num_batches < self.model_tokens.window_batches + 1:
            return torch.zeros(self.vocab_size, device=device)
        return frequent_token_penalty(
            self.model_tokens.counts(self.vocab_size, device),
            self.human_tokens.counts(self.vocab_size, device),
            self.threshold,
        )

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        replies = self.decode(model, batch.src)
        gold = batch.tgt_out[batch.tgt_out.ne(self.pad_id) & batch.tgt_out.ne(self.eos_id)]
        self.model_tokens.add_batch(_gather_across_ranks([t for r in replies for t in r]))
        self.human_tokens.add_batch(_gather_across_ranks(gold.tolist()))
        beta = self.penalty(batch.src.device)
        rows = [i for i, r in enumerate(replies) if r and bool(beta[r].gt(0).any())]
        if rows:
            gen = [replies[i] for i in rows]
            width = max(len(r) for r in gen)
            gen_in = torch.tensor(
                [[self.bos_id, *r[:-1], *[self.pad_id] * (width - len(r))] for r in gen],
                device=batch.src.device,
            )
            gen_out = torch.tensor(
                [[*r, *[self.pad_id] * (width - len(r))] for r in gen], device=batch.src.device
            )
            gold_logits, gen_logits = _joint_logits(
                model, batch, batch.src[rows], gen_in, self.pad_id
            )
            ul = token_unlikelihood_loss(gen_logits, gen_out, beta, self.pad_id)
            n_penalised = int((beta[gen_out] * gen_out.ne(self.pad_id)).gt(0).sum())
        else:
            gold_logits = model(batch.src, batch.tgt_in).logits
            ul, n_penalised = gold_logits.new_zeros((), dtype=torch.float32), 0
        mle = smoothed_nll(gold_logits, batch.tgt_out, self.pad_id, self.label_smoothing)
        return mle + self.alpha * ul, {
            "ul_loss": ul.item(),
            "ul_penalised_tokens": float(n_penalised),
            "ul_penalised_types": float(int(beta.gt(0).sum())),
            "ul_mle_loss": mle.item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model_tokens.state_dict(), "human": self.human_tokens.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model_tokens.load_state_dict(state["model"])
        self.human_tokens.load_state_dict(state["human"])


# --- jobs -------------------------------------------------------------------------------------


def _fine_tune_standard(
    method: str,
    make_objective: Callable[[GenerativeResponder], Objective],
    hyper: dict[str, Any],
    *,
    base_bundle: Path,
    preset: Preset,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    resume: bool,
    seed: int,
    optimizer: str,
    lr: float | None,
    max_steps: int | None,
) -> Manifest | None:
    """Load the standard bundle, fine-tune it with a constant learning rate, write a bundle."""
    base = GenerativeResponder.load(base_bundle)
    assert base.inputs == preset.inputs, (
        f"{base_bundle} was trained with inputs {base.inputs}, preset {preset.name!r} has "
        f"{preset.inputs}: fine-tune under the preset that built the standard model"
    )
    model = base.model.train()
    train_pairs = PairSet.encode(train_examples, base.tokenizer, preset.inputs)
    val_pairs = PairSet.encode(val_examples, base.tokenizer, preset.inputs)
    tc = preset.generator.train
    schedule = fine_tune_overrides(base, preset)  # NT/UL run a fixed budget; val loss only rises
    if lr is None:  # where the standard model's schedule ended (see train_nt_generator)
        lr = float(schedule["lr"])
    steps = max_steps if max_steps is not None else tc.max_steps
    objective: Objective = make_objective(base)
    logger.info(
        "fine-tuning %s with %s from %s: lr %.2e, %d steps", name, method, base.bundle_id, lr, steps
    )
    result = run_generator_training(
        model,
        objective,
        preset=preset,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        run_dir=run_dir,
        dist_ctx=dist_ctx,
        resume=resume,
        train_overrides={
            "seed": seed,
            "optimizer": optimizer,
            **schedule,
            "lr": lr,
            "max_steps": steps,
        },
    )
    if not dist_ctx.is_main:
        return None
    return save_generator(
        model,
        base.tokenizer,
        preset,
        result,
        out_dir=out_dir,
        name=name,
        training={
            "data": data_desc,
            "method": method,
            "base": base.bundle_id,
            **hyper,
            "optimizer": optimizer,
            "lr_schedule": "constant",
            "lr": lr,
            "seed": seed,
            "train_pairs": len(train_pairs),
            "world_size": dist_ctx.world_size,
        },
    )


def train_nt_generator(
    *,
    base_bundle: Path,
    preset: Preset,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    resume: bool = True,
    seed: int = 0,
    r_thres: float = 0.01,
    lambda_pos: float = 1.0,
    eos_weight: float = 0.1,
    window_batches: int = 200,
    optimizer: str = "adam",
    lr: float | None = None,
    max_steps: int | None = None,
) -> Manifest | None:
    """Fine-tune the standard generator with NT (He & Glass 2020, Alg. 2); None off rank 0.

    He & Glass fine-tune with plain SGD at "a fixed learning rate of 0.001" (section 4.3), which
    is, on our reading of section 4.1 (lr 1, then "10 iterations with LR halving": 2^-10 ~ 0.001),
    about where their baseline's schedule ended. The
    standard model here is trained with Adam and ND eq. 17, and the ND paper runs its baselines
    "with the same architecture and hyper-parameters as ours", so the default is Adam at the
    constant rate eq. 17 had reached at the base model's last step (``lr=None``); pass
    ``optimizer="sgd", lr=1e-3`` for He & Glass's literal setting. The batch size is the preset's.
    """
    hyper: dict[str, Any] = {
        "r_thres": r_thres,
        "lambda_pos": lambda_pos,
        "eos_weight": eos_weight,
        "window_batches": window_batches,
    }
    return _fine_tune_standard(
        "nt",
        lambda base: NegativeTrainingObjective(
            base.tokenizer.pad_id,
            base.tokenizer.eos_id,
            base.tokenizer.bos_id,
            max_decode_len=preset.decoding.max_length,
            no_repeat_ngram_size=preset.decoding.no_repeat_ngram_size,
            **hyper,
        ),
        hyper,
        base_bundle=base_bundle,
        preset=preset,
        train_examples=train_examples,
        val_examples=val_examples,
        out_dir=out_dir,
        name=name,
        run_dir=run_dir,
        dist_ctx=dist_ctx,
        data_desc=data_desc,
        resume=resume,
        seed=seed,
        optimizer=optimizer,
        lr=lr,
        max_steps=max_steps,
    )


def train_ul_generator(
    *,
    base_bundle: Path,
    preset: Preset,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    resume: bool = True,
    seed: int = 0,
    alpha: float = 1000.0,
    window_batches: int = 32,
    threshold: float = 1e-3,
    optimizer: str = "adam",
    lr: float | None = None,
    max_steps: int | None = None,
) -> Manifest | None:
    """Fine-tune the standard generator with vocabulary UL (Li et al. 2020a); None off rank 0.

    ND appendix B: "we search the mixing hyperparameter alpha in [1,10,100,1000] and 1000 is
    selected [...] Both NT and UL are refined on the well-trained Standard model." Optimiser and
    learning rate as in :func:`train_nt_generator`.
    """
    hyper: dict[str, Any] = {
        "alpha": alpha,
        "window_batches": window_batches,
        "threshold": threshold,
    }
    return _fine_tune_standard(
        "ul",
        lambda base: UnlikelihoodObjective(
            base.tokenizer.pad_id,
            base.tokenizer.eos_id,
            base.tokenizer.bos_id,
            base.model.cfg.vocab_size,
            max_decode_len=preset.decoding.max_length,
            no_repeat_ngram_size=preset.decoding.no_repeat_ngram_size,
            **hyper,
        ),
        hyper,
        base_bundle=base_bundle,
        preset=preset,
        train_examples=train_examples,
        val_examples=val_examples,
        out_dir=out_dir,
        name=name,
        run_dir=run_dir,
        dist_ctx=dist_ctx,
        data_desc=data_desc,
        resume=resume,
        seed=seed,
        optimizer=optimizer,
        lr=lr,
        max_steps=max_steps,
    )
