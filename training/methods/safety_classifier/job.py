"""Training the DiaSafety safety classifier (Sun et al., Findings of ACL 2022) and its report.

Input is the (context, response) pair, label Unsafe = positive. Procedure:

1. DiaSafety train is split, stratified by (category, label), into a fitting part and a
   ``threshold_holdout`` share held out; DiaSafety val is never used for any choice.
2. Each architecture (:mod:`models.safety`: ``cross-encoder``, warm-started from a generator's
   encoder when one of the same shape is given; ``bag``, fastText-style) is fitted with AdamW and
   binary cross-entropy; after every epoch the held-out F1 at its best threshold picks the epoch
   whose weights are kept.
3. The decision threshold is the one maximising F1 on the held-out part; with
   ``max_benign_flag_rate`` it is the best one among those that flag at most that share of
   ``benign_threshold_pairs`` held-out DailyDialog train pairs (ordinary traffic, the false
   refusals a user sees). With ``both`` architectures, the higher held-out F1 picks the bundle.
4. Val is scored once at the end: accuracy, precision, recall, F1 (and per DiaSafety category)
   at the chosen threshold, plus ROC AUC; and the share of ordinary DailyDialog validation replies
   flagged (a false-positive rate on the benign traffic the service mostly sees).

DiaSafety's contexts were all selected as risky, so with ``benign_pairs`` DailyDialog train pairs
are added to the fit set as Safe: without them the classifier flags about half of ordinary replies.

The classifier judges only contexts it can read (:func:`models.safety.readable_turn`): the words
it knows are those seen ``min_word_count`` times in the fit set (shipped as ``words.txt``), and a
context it cannot read is judged as empty, in training as in serving. So that the model has seen
empty contexts, ``reply_only_share`` of the fit examples are added again with an empty context:
every Safe one may be picked (a reply that is safe in context is safe alone) and the Unsafe ones of
``reply_only_unsafe_categories``, where the harm is in the reply itself (offending the user,
unauthorised medical advice); agreeing with toxicity or ignoring a risk is unsafe only in context.

Runs take minutes on one CPU thread, so there is no checkpointing: an interrupted run restarts,
and the pipeline skips the stage once the bundle verifies.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.bundle import load_state_dict, verify_bundle
from models.safety import (
    MIN_KNOWN_SHARE,
    Architecture,
    Blocklist,
    CrossEncoderClassifier,
    SafetyClassifier,
    SafetyClassifierConfig,
    build_classifier_model,
    known_words,
)
from models.tokenizer import DialogueTokenizer
from training.core.data import DatasetNotFoundError
from training.core.safety_data import SafetyExample, load_diasafety
from training.presets import SHARED_DATA

logger = logging.getLogger(__name__)

SAFETY_CLASSIFIER = "safety-classifier"
DEFAULT_SHARED_DATA = SHARED_DATA
ArchitectureChoice = Literal["cross-encoder", "bag", "both"]


# --- presets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    """One architecture's shape and optimisation."""

    model: SafetyClassifierConfig  # vocab_size is filled from the tokenizer
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4  # AdamW peak, linear warm-up then linear decay to 0
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # of all updates
    max_seconds: float = 0.0  # wall-clock cap on fitting (0 = none); stops after the current step


@dataclass(frozen=True)
class SafetyPreset:
    """A named safety-classifier configuration; every report says which one it used."""

    name: str
    cross_encoder: FitConfig
    bag: FitConfig
    architecture: ArchitectureChoice = "cross-encoder"  # what `build` and the CLI default train
    vocab_size: int = 4000  # BPE pieces when no base generator provides the tokenizer
    threshold_holdout: float = 0.1  # share of DiaSafety train held out for threshold choice
    max_train_examples: int = 0  # 0 = all of DiaSafety train (tests use a subset)
    # Every DiaSafety context was picked as risky, so a classifier fitted on it alone flags about
    # half of ordinary replies. This many DailyDialog train pairs (when the corpus is found) join
    # the fit set labelled Safe; 0 = off. The held-out and val sets stay DiaSafety only.
    benign_pairs: int = 0
    benign_eval_pairs: int = 500  # DailyDialog validation pairs for the benign flag rate
    # Threshold calibration: this many further DailyDialog train pairs (disjoint from the fit
    # pairs) are held out, and the threshold may flag at most max_benign_flag_rate of them
    # (0 = no cap: the F1-best threshold on held-out DiaSafety).
    benign_threshold_pairs: int = 0
    max_benign_flag_rate: float = 0.0
    # The readability rule: known words are those seen min_word_count times in the fit texts
    # (0 = no word list: every context is read as it is); a context is read when at least
    # min_known_share of its content words are known.
    min_word_count: int = 2
    min_known_share: float = MIN_KNOWN_SHARE
    # Fit examples repeated with an empty context (see the module doc); 0 = none.
    reply_only_share: float = 0.0
    reply_only_unsafe_categories: tuple[str, ...] = ("Offending User", "Unauthorized Expertise")

    def fit_config(self, architecture: Architecture) -> FitConfig:
        return self.cross_encoder if architecture == "cross-encoder" else self.bag


SAFETY_PRESETS: dict[str, SafetyPreset] = {
    "tiny": SafetyPreset(
        name="tiny",
        # The tiny generator's encoder shape (training/presets.py), so the pipeline warm-starts.
        cross_encoder=FitConfig(
            model=SafetyClassifierConfig(
                "cross-encoder", d_model=32, n_heads=2, d_ff=64, n_layers=1, max_len=48
            ),
            epochs=1,
            batch_size=16,
            lr=1e-3,
        ),
        bag=FitConfig(
            model=SafetyClassifierConfig("bag", d_model=16, max_len=48, bigram_buckets=1024),
            epochs=1,
            batch_size=16,
            lr=3e-3,
        ),
        vocab_size=300,
        max_train_examples=400,
        benign_eval_pairs=0,  # tests: no DailyDialog loading
        reply_only_share=0.25,
    ),
    # Measured on 1 CPU thread of a shared 2-core machine: reports/safety_classifier.md.
    "small": SafetyPreset(
        name="small",
        # The small generator's encoder (d=256, 4 heads, FFN 1024, 2 layers): warm start.
        cross_encoder=FitConfig(
            model=SafetyClassifierConfig(
                "cross-encoder", d_model=256, n_heads=4, d_ff=1024, n_layers=2, max_len=80
            ),
            epochs=3,
            batch_size=32,
            lr=3e-4,  # 1e-4 reached only val ROC AUC 0.735 in the 300 s budget
            max_seconds=300.0,
        ),
        bag=FitConfig(
            model=SafetyClassifierConfig("bag", d_model=64, max_len=96, bigram_buckets=1 << 16),
            # One epoch: in the small build the held-out F1 was best after epoch 1 (0.723, then
            # 0.706 and 0.692: the bag model overfits DiaSafety), at a third of the time.
            epochs=1,
            batch_size=32,
            lr=2e-3,
            weight_decay=0.0,
            max_seconds=150.0,
        ),
        benign_pairs=8000,
        # The bag model: better on held-out train and ~4x cheaper than the cross-encoder in the
        # same CPU budget (reports/safety_classifier.md), so the pipeline builds it.
        architecture="bag",
        # DiaSafety is half unsafe, so its F1-best threshold can flag many ordinary replies
        # (reports/safety_filter_fit.md); the cap keeps that near 2% of ordinary traffic.
        benign_threshold_pairs=1000,
        max_benign_flag_rate=0.02,
        reply_only_share=0.25,
    ),
    "paper": SafetyPreset(
        name="paper",
        # The paper generator's encoder (6 layers, d=512); for a GPU.
        cross_encoder=FitConfig(
            model=SafetyClassifierConfig(
                "cross-encoder", d_model=512, n_heads=8, d_ff=2048, n_layers=6, max_len=128
            ),
            epochs=4,
            batch_size=32,
            lr=5e-5,
        ),
        bag=FitConfig(
            model=SafetyClassifierConfig("bag", d_model=128, max_len=128, bigram_buckets=1 << 18),
            epochs=5,
            batch_size=32,
            lr=2e-3,
            weight_decay=0.0,
        ),
        vocab_size=16000,
    ),
}


def get_safety_preset(name: str) -> SafetyPreset:
    try:
        return SAFETY_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {sorted(SAFETY_PRESETS)}"
        ) from None


# --- data -------------------------------------------------------------------------------------


def find_diasafety(data_dir: Path) -> Path:
    """The DiaSafety folder for ``data_dir``: itself, its ``diasafety/`` child, or its sibling
    (so ``--data ../shared/data/dailydialog``, the pipeline's corpus, finds it too)."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir / "diasafety", data_dir.parent / "diasafety"):
        if (root / "train.json").is_file() and (root / "val.json").is_file():
            return root
    raise DatasetNotFoundError(
        f"no DiaSafety near {data_dir}: expected train.json and val.json in it, in its "
        "diasafety/ folder or in a sibling diasafety/ folder"
    )


def find_blocklist(data_dir: Path) -> Path | None:
    """``blocklist/en.txt`` in ``data_dir`` or beside it, else the shared data's; None if absent."""
    data_dir = Path(data_dir)
    for path in (
        data_dir / "blocklist" / "en.txt",
        data_dir.parent / "blocklist" / "en.txt",
        DEFAULT_SHARED_DATA / "blocklist" / "en.txt",
    ):
        if path.is_file():
            return path
    return None


def find_dailydialog(data_dir: Path) -> Path | None:
    """DailyDialog for ``data_dir``: itself (the pipeline's corpus), its ``dailydialog/`` child
    or its sibling; None when there is none."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir / "dailydialog", data_dir.parent / "dailydialog"):
        if (root / "train").is_dir() or (root / "train.jsonl").is_file():
            return root
    return None


def load_benign_pairs(
    dailydialog: Path, n_train: int, n_eval: int, seed: int, n_threshold: int = 0
) -> tuple[list[SafetyExample], list[SafetyExample], list[SafetyExample]]:
    """(``n_train`` seeded DailyDialog train pairs, the first ``n_eval`` validation pairs,
    ``n_threshold`` further seeded train pairs disjoint from the first), as single-turn Safe
    examples of category ``DailyDialog``."""
    from training.core.data import load_splits

    splits = load_splits(dailydialog, max_context_turns=1)

    def to_safe(examples: Sequence[Any]) -> list[SafetyExample]:
        return [SafetyExample(e.context[-1], e.response, "DailyDialog", False) for e in examples]

    n_train = min(n_train, len(splits.train))
    drawn = random.Random(seed).sample(splits.train, min(n_train + n_threshold, len(splits.train)))
    return to_safe(drawn[:n_train]), to_safe(splits.validation[:n_eval]), to_safe(drawn[n_train:])


def reply_only_examples(
    examples: Sequence[SafetyExample],
    share: float,
    unsafe_categories: Sequence[str],
    seed: int,
) -> list[SafetyExample]:
    """Copies of a seeded ``share`` of the eligible ``examples`` with an empty context: every
    Safe example is eligible, Unsafe ones only in ``unsafe_categories`` (harm in the reply)."""
    assert 0.0 <= share <= 1.0, f"reply_only_share must be in [0, 1], got {share}"
    eligible = [e for e in examples if not e.unsafe or e.category in unsafe_categories]
    picked = random.Random(seed).sample(eligible, round(len(eligible) * share))
    return [replace(e, context="") for e in picked]


def stratified_holdout(
    examples: Sequence[SafetyExample], fraction: float, seed: int
) -> tuple[list[SafetyExample], list[SafetyExample]]:
    """(fit, held out): ``fraction`` of every (category, label) group, drawn with ``seed``."""
    assert 0.0 < fraction < 1.0, f"holdout fraction must be in (0, 1), got {fraction}"
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault((ex.category, ex.unsafe), []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        held.update(idx[: max(1, round(len(idx) * fraction))])
    fit = [ex for i, ex in enumerate(examples) if i not in held]
    return fit, [ex for i, ex in enumerate(examples) if i in held]


# --- metrics (pure functions) -----------------------------------------------------------------


def binary_metrics(
    probs: Sequence[float], labels: Sequence[bool], threshold: float
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of ``p >= threshold`` with unsafe as the positive class
    (precision/recall/F1 are 0 where undefined), plus the counts."""
    tp = fp = fn = tn = 0
    for p, y in zip(probs, labels, strict=True):
        pred = p >= threshold
        tp += pred and y
        fp += pred and not y
        fn += (not pred) and y
        tn += (not pred) and (not y)
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "n": n,
        "unsafe": tp + fn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def best_f1_threshold(
    probs: Sequence[float], labels: Sequence[bool], *, above: float | None = None
) -> tuple[float, float]:
    """(threshold, F1): the cut ``p >= threshold`` with the highest F1; ties in F1 go to the
    higher threshold. The threshold is one of the probabilities, kept inside (0, 1); with
    ``above``, only thresholds greater than it are considered (none: just above it, F1 0)."""
    positives = sum(labels)
    if positives == 0 or not probs:
        return (0.5 if above is None else _just_above(above)), 0.0
    order = sorted(zip(probs, labels, strict=True), key=lambda x: -x[0])
    best_t, best_f1, tp = 0.5, -1.0, 0
    for k, (p, y) in enumerate(order, start=1):
        if above is not None and p <= above:
            break
        tp += y
        if k < len(order) and order[k][0] == p:
            continue  # a cut can only fall between distinct probabilities
        f1 = 2 * tp / (k + positives)
        if f1 > best_f1:
            best_t, best_f1 = p, f1
    if best_f1 < 0:  # no probability above the floor: flag nothing
        return _just_above(above if above is not None else 0.5), 0.0
    return min(max(best_t, 1e-6), 1 - 1e-6), best_f1


def _just_above(p: float) -> float:
    return min(max(math.nextafter(p, 1.0), 1e-6), 1 - 1e-6)


def benign_floor(benign_probs: Sequence[float], max_flag_rate: float) -> float | None:
    """The largest benign probability a threshold must exceed so that ``p >= threshold`` flags
    at most ``max_flag_rate`` of ``benign_probs``; None when there is no cap."""
    if not benign_probs or max_flag_rate <= 0.0:
        return None
    allowed = math.floor(max_flag_rate * len(benign_probs))  # flagged benign pairs allowed
    if allowed >= len(benign_probs):
        return None
    return sorted(benign_probs, reverse=True)[allowed]


def capped_f1_threshold(
    probs: Sequence[float],
    labels: Sequence[bool],
    benign_probs: Sequence[float],
    max_flag_rate: float,
) -> tuple[float, float]:
    """(threshold, F1): the F1-best cut on (``probs``, ``labels``) among those that flag at most
    ``max_flag_rate`` of ``benign_probs`` (ordinary, harmless pairs); no cap without them."""
    return best_f1_threshold(probs, labels, above=benign_floor(benign_probs, max_flag_rate))


def roc_auc(probs: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return math.nan
    order = sorted(range(len(probs)), key=lambda i: probs[i])
    ranks = [0.0] * len(probs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probs[order[j + 1]] == probs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # average 1-based rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def evaluate_split(
    classifier: SafetyClassifier, examples: Sequence[SafetyExample], threshold: float
) -> dict[str, Any]:
    """Overall and per-category metrics of ``classifier`` at ``threshold``, plus ROC AUC."""
    probs = classifier.unsafe_probability(
        [e.context for e in examples], [e.response for e in examples]
    )
    labels = [e.unsafe for e in examples]
    result: dict[str, Any] = {
        **binary_metrics(probs, labels, threshold),
        "roc_auc": roc_auc(probs, labels),
        "at_0.5": binary_metrics(probs, labels, 0.5),
        "per_category": {},
    }
    for category in sorted({e.category for e in examples}):
        rows = [i for i, e in enumerate(examples) if e.category == category]
        result["per_category"][category] = binary_metrics(
            [probs[i] for i in rows], [labels[i] for i in rows], threshold
        )
    return result


# --- fitting ----------------------------------------------------------------------------------


@dataclass
class FitResult:
    """One fitted architecture: the classifier (threshold set), where it came from, how it did."""

    classifier: SafetyClassifier
    architecture: Architecture
    holdout: dict[str, Any]
    val: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    stop_reason: str = "epochs"
    warm_start: str | None = None
    parameters: int = 0


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` updates, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def fit_classifier(
    architecture: Architecture,
    fit: FitConfig,
    tokenizer: DialogueTokenizer,
    train: Sequence[SafetyExample],
    holdout: Sequence[SafetyExample],
    *,
    base_state: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    words: Sequence[str] | None = None,
    min_known_share: float = MIN_KNOWN_SHARE,
    benign_holdout: Sequence[SafetyExample] = (),
    max_benign_flag_rate: float = 0.0,
    progress: bool = True,
) -> FitResult:
    """Fit one architecture on ``train``, keep the epoch with the best held-out F1, and set the
    threshold that maximises held-out F1 (among those that flag at most
    ``max_benign_flag_rate`` of ``benign_holdout``). With ``words`` the classifier reads contexts
    by the readability rule, in fitting as afterwards."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg = replace(fit.model, vocab_size=tokenizer.vocab_size, sep_id=tokenizer.sep_id)
    model = build_classifier_model(cfg)
    warm_start = None
    if base_state is not None and isinstance(model, CrossEncoderClassifier):
        try:
            copied = model.init_from_generator(base_state)
            warm_start = f"{len(copied)} tensors from the generator's encoder"
        except ValueError as exc:
            logger.warning("no warm start for the cross-encoder: %s", exc)
    classifier = SafetyClassifier(
        model, tokenizer, cfg, words=words, min_known_share=min_known_share
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("fitting %s safety classifier: %d parameters, %s", architecture, n_params, cfg)

    ids = classifier.encode_ids([e.context for e in train], [e.response for e in train])

    def choose_threshold() -> tuple[float, float]:
        probs = classifier.unsafe_probability(
            [e.context for e in holdout], [e.response for e in holdout]
        )
        benign = (
            classifier.unsafe_probability(
                [e.context for e in benign_holdout], [e.response for e in benign_holdout]
            )
            if benign_holdout and max_benign_flag_rate > 0
            else []
        )
        return capped_f1_threshold(probs, [e.unsafe for e in holdout], benign, max_benign_flag_rate)

    labels = torch.tensor([float(e.unsafe) for e in train])
    steps_per_epoch = math.ceil(len(train) / fit.batch_size)
    total = steps_per_epoch * fit.epochs
    warmup = max(1, round(total * fit.warmup_fraction))
    optimizer = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, warmup))

    started = time.perf_counter()
    result = FitResult(classifier, architecture, {}, warm_start=warm_start, parameters=n_params)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    step = 0
    # One bar over every update of the fit (an epoch of the cross-encoder takes minutes on CPU).
    bar = tqdm(
        total=total, desc=f"safety {architecture}", unit="step", disable=not progress, leave=False
    )
    for epoch in range(1, fit.epochs + 1):
        model.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        running, batches = 0.0, 0
        bar.set_postfix_str(f"epoch {epoch}/{fit.epochs}")
        for start in range(0, len(order), fit.batch_size):
            rows = order[start : start + fit.batch_size]
            batch = tokenizer.pad([ids[i] for i in rows])
            loss = F.binary_cross_entropy_with_logits(model(batch), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            batches += 1
            running += loss.item()
            bar.update(1)
            if fit.max_seconds and time.perf_counter() - started > fit.max_seconds:
                result.stop_reason = f"max_seconds ({fit.max_seconds:g} s) in epoch {epoch}"
                break
        bar.set_postfix_str(f"epoch {epoch}/{fit.epochs}: held-out F1")
        threshold, f1 = choose_threshold()
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": running / max(1, batches),
            "holdout_f1": f1,
            "holdout_threshold": threshold,
            "elapsed_s": time.perf_counter() - started,
        }
        result.history.append(record)
        logger.info("%s epoch %d: %s", architecture, epoch, record)
        if best is None or f1 > best[0]:
            best = (f1, {k: v.detach().clone() for k, v in model.state_dict().items()})
            result.best_epoch = epoch
        if result.stop_reason != "epochs":
            break
    bar.close()
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    result.steps = step
    result.wall_time_s = time.perf_counter() - started
    threshold, _ = choose_threshold()
    classifier.threshold = threshold
    result.holdout = evaluate_split(classifier, holdout, threshold)
    if benign_holdout:
        flagged = classifier.is_unsafe(
            [e.context for e in benign_holdout], [e.response for e in benign_holdout]
        )
        result.holdout["benign_flag_rate"] = sum(flagged) / len(flagged)
    return result


def base_generator(base: Path | None) -> tuple[DialogueTokenizer | None, dict[str, Any] | None]:
    """The tokenizer and weights of a generator bundle to warm-start from (None, None without)."""
    if base is None:
        return None, None
    manifest = verify_bundle(base)
    if manifest.kind != "generator":
        raise ValueError(f"--base {base} is a {manifest.kind} bundle, not a generator")
    tokenizer = DialogueTokenizer.from_file(base / "tokenizer.json")
    return tokenizer, load_state_dict(base, manifest)


def train_safety_classifier(
    preset: SafetyPreset,
    data_dir: Path,
    out_dir: Path,
    *,
    name: str = SAFETY_CLASSIFIER,
    architecture: ArchitectureChoice | None = None,
    base: Path | None = None,
    blocklist: Path | None = None,
    benign_pairs: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the architecture(s), write the chosen one as a ``classifier`` bundle at ``out_dir``
    and return the report: every fitted architecture with its held-out and val metrics.
    ``benign_pairs`` overrides the preset's count of DailyDialog pairs added as Safe."""
    benign_pairs = preset.benign_pairs if benign_pairs is None else benign_pairs
    started = time.perf_counter()
    root = find_diasafety(data_dir)
    train_all = load_diasafety(root, "train")
    val = load_diasafety(root, "val")
    if preset.max_train_examples:
        # A seeded subset, so a small run still sees every category and both labels.
        train_all = random.Random(seed).sample(
            train_all, min(preset.max_train_examples, len(train_all))
        )
    fit_set, holdout = stratified_holdout(train_all, preset.threshold_holdout, seed)
    benign_fit: list[SafetyExample] = []
    benign_eval: list[SafetyExample] = []
    benign_threshold: list[SafetyExample] = []
    n_threshold = preset.benign_threshold_pairs if preset.max_benign_flag_rate > 0 else 0
    wants_dailydialog = preset.benign_eval_pairs or benign_pairs or n_threshold
    dailydialog = find_dailydialog(data_dir) if wants_dailydialog else None
    if dailydialog is not None:
        benign_fit, benign_eval, benign_threshold = load_benign_pairs(
            dailydialog, benign_pairs, preset.benign_eval_pairs, seed, n_threshold
        )
    elif benign_pairs or n_threshold:
        logger.warning("no DailyDialog near %s: fitting on DiaSafety alone", data_dir)
    words = (
        known_words(
            (t for e in fit_set + benign_fit for t in (e.context, e.response)),
            preset.min_word_count,
        )
        if preset.min_word_count > 0
        else None
    )
    reply_only = reply_only_examples(
        fit_set + benign_fit, preset.reply_only_share, preset.reply_only_unsafe_categories, seed
    )
    tokenizer, base_state = base_generator(base)
    if tokenizer is None:
        texts = list(dict.fromkeys(t for e in fit_set for t in (e.context, e.response)))
        tokenizer = DialogueTokenizer.train(texts, preset.vocab_size)
    choice = architecture or preset.architecture
    architectures: list[Architecture] = ["cross-encoder", "bag"] if choice == "both" else [choice]
    results = []
    for arch in architectures:
        res = fit_classifier(
            arch,
            preset.fit_config(arch),
            tokenizer,
            fit_set + benign_fit + reply_only,
            holdout,
            base_state=base_state if arch == "cross-encoder" else None,
            seed=seed,
            words=words,
            min_known_share=preset.min_known_share,
            benign_holdout=benign_threshold,
            max_benign_flag_rate=preset.max_benign_flag_rate,
        )
        # Val is scored for the report only; nothing is chosen with it.
        res.val = evaluate_split(res.classifier, val, res.classifier.threshold)
        if benign_eval:
            flagged = res.classifier.is_unsafe(
                [e.context for e in benign_eval], [e.response for e in benign_eval]
            )
            res.val["benign_flag_rate"] = sum(flagged) / len(flagged)
        results.append(res)
    chosen = max(results, key=lambda r: r.holdout["f1"])
    if blocklist is not None:
        chosen.classifier.blocklist = Blocklist.from_file(blocklist)
    report: dict[str, Any] = {
        "preset": preset.name,
        "data": str(root),
        "seed": seed,
        "base": str(base) if base else None,
        "blocklist": str(blocklist) if blocklist else None,
        "split": {
            "train_fit": len(fit_set),
            "benign_fit": len(benign_fit),
            "benign_eval": len(benign_eval),
            "benign_data": str(dailydialog) if dailydialog else None,
            "threshold_holdout": len(holdout),
            "val": len(val),
            "holdout_fraction": preset.threshold_holdout,
        },
        "calibration": {
            "benign_threshold_pairs": len(benign_threshold),
            "max_benign_flag_rate": preset.max_benign_flag_rate if benign_threshold else 0.0,
        },
        "reading": {
            "known_words": len(words) if words is not None else None,
            "min_word_count": preset.min_word_count,
            "min_known_share": preset.min_known_share,
            "reply_only_examples": len(reply_only),
            "reply_only_unsafe_categories": list(preset.reply_only_unsafe_categories),
            # Val contexts the classifier cannot read, so judged as empty.
            "val_contexts_unread": sum(
                not chosen.classifier.readable_context(e.context) for e in val
            ),
        },
        "selection": "architecture and threshold chosen by F1 on the held-out part of train"
        + (
            f", the threshold among those flagging at most {preset.max_benign_flag_rate:.0%} "
            f"of {len(benign_threshold)} held-out DailyDialog train pairs"
            if benign_threshold
            else ""
        )
        + "; val scored once, never used for a choice",
        "chosen": chosen.architecture,
        "threshold": chosen.classifier.threshold,
        "architectures": {r.architecture: _result_dict(r, preset) for r in results},
        "torch_threads": torch.get_num_threads(),
    }
    assert chosen.val is not None
    metrics = {
        "val_accuracy": chosen.val["accuracy"],
        "val_precision": chosen.val["precision"],
        "val_recall": chosen.val["recall"],
        "val_f1": chosen.val["f1"],
        "val_roc_auc": chosen.val["roc_auc"],
        "benign_flag_rate": chosen.val.get("benign_flag_rate"),
        "holdout_f1": chosen.holdout["f1"],
        "threshold": chosen.classifier.threshold,
    }
    training = {
        "data": str(root),
        "preset": preset.name,
        "method": chosen.architecture,
        "steps": chosen.steps,
        "seed": seed,
        "base": str(base) if base else None,
        "train_pairs": len(fit_set),
        "benign_pairs": len(benign_fit),
        "reply_only_pairs": len(reply_only),
        "benign_threshold_pairs": len(benign_threshold),
        "max_benign_flag_rate": preset.max_benign_flag_rate if benign_threshold else 0.0,
        "holdout_pairs": len(holdout),
        "wall_time_s": round(chosen.wall_time_s, 1),
    }
    manifest = chosen.classifier.save(out_dir, name=name, training=training, metrics=metrics)
    report["bundle"] = {"path": str(out_dir), "id": manifest.bundle_id}
    report["total_wall_time_s"] = time.perf_counter() - started
    return report


def _result_dict(r: FitResult, preset: SafetyPreset) -> dict[str, Any]:
    fit = preset.fit_config(r.architecture)
    return {
        "model": r.classifier.cfg.to_dict(),
        "parameters": r.parameters,
        "fit": {
            "epochs": fit.epochs,
            "batch_size": fit.batch_size,
            "lr": fit.lr,
            "weight_decay": fit.weight_decay,
            "max_seconds": fit.max_seconds,
        },
        "warm_start": r.warm_start,
        "steps": r.steps,
        "best_epoch": r.best_epoch,
        "stop_reason": r.stop_reason,
        "wall_time_s": r.wall_time_s,
        "threshold": r.classifier.threshold,
        "history": r.history,
        "holdout": r.holdout,
        "val": r.val,
    }


def build_stage(
    preset_name: str,
    data_dir: Path,
    out_dir: Path,
    *,
    base: Path | None,
    report: Path | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The pipeline's safety-classifier stage (the preset's architecture, the generator's
    tokenizer; ``report`` gets ``.json`` and ``.md``); None, with a warning, without DiaSafety."""
    try:
        find_diasafety(data_dir)
    except DatasetNotFoundError as exc:
        logger.warning("skipping the safety classifier: %s", exc)
        return None
    preset = SAFETY_PRESETS.get(preset_name, SAFETY_PRESETS["small"])
    result = train_safety_classifier(
        preset, data_dir, out_dir, base=base, blocklist=find_blocklist(data_dir), seed=seed
    )
    if report is not None:
        write_report(result, report)
    return result


def write_report(report: dict[str, Any], out: Path, command: str | None = None) -> None:
    """``<out>.json`` and ``<out>.md``."""
    if command:
        report = {**report, "command": command}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_report(report, command) + "\n")


# --- the report -------------------------------------------------------------------------------


def _row(label: str, m: dict[str, Any]) -> str:
    return (
        f"| {label} | {m['n']} | {m['unsafe']} | {m['accuracy']:.3f} | {m['precision']:.3f} "
        f"| {m['recall']:.3f} | {m['f1']:.3f} |"
    )


def markdown_report(report: dict[str, Any], command: str | None = None) -> str:
    """The report as markdown: setup, a table per architecture, per-category val figures."""
    header = (
        "| split | n | unsafe | accuracy | precision | recall | F1 |\n|---|---|---|---|---|---|---|"
    )
    lines = [
        "# DiaSafety safety classifier",
        "",
        f"Preset `{report['preset']}`, seed {report['seed']}, data `{report['data']}`, "
        f"{report['torch_threads']} torch thread(s). Unsafe is the positive class.",
        "",
    ]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    s = report["split"]
    lines += [
        f"DiaSafety train split, stratified by (category, label): {s['train_fit']} pairs to fit, "
        f"{s['threshold_holdout']} held out ({s['holdout_fraction']:.0%}) to choose the epoch, "
        f"the decision threshold and the architecture. Val ({s['val']} pairs) was scored once at "
        "the end and used for no choice. "
        + (
            f"{s['benign_fit']} DailyDialog train pairs (`{s['benign_data']}`) were added to the "
            f"fit set as Safe; the benign flag rate is the share of {s['benign_eval']} DailyDialog "
            "validation (context, gold reply) pairs the classifier calls unsafe."
            if s.get("benign_data")
            else "No DailyDialog pairs were used."
        ),
        "",
    ]
    cal, rd = report.get("calibration", {}), report.get("reading", {})
    if cal.get("benign_threshold_pairs"):
        lines += [
            f"Threshold cap: the threshold is the F1-best one on held-out DiaSafety among those "
            f"that flag at most {cal['max_benign_flag_rate']:.1%} of "
            f"{cal['benign_threshold_pairs']} further DailyDialog train pairs (disjoint from the "
            "fit pairs).",
            "",
        ]
    if rd.get("known_words") is not None:
        lines += [
            f"Reading: {rd['known_words']} known words (seen at least {rd['min_word_count']} "
            f"times in the fit texts); a context is read when at least "
            f"{rd['min_known_share']:.0%} of its content words are known, else judged as empty "
            f"({rd['val_contexts_unread']} of the val contexts). {rd['reply_only_examples']} fit "
            "examples were added again with an empty context (Safe ones, and Unsafe ones of "
            f"{', '.join(rd['reply_only_unsafe_categories']) or 'no category'}).",
            "",
        ]
    lines += [
        f"Chosen: **{report['chosen']}**, threshold {report['threshold']:.4f} "
        f"-> bundle `{report['bundle']['id']}` at `{report['bundle']['path']}`.",
        "",
    ]
    for arch, r in report["architectures"].items():
        m = r["model"]
        shape = (
            f"d={m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, FFN {m['d_ff']}"
            if arch == "cross-encoder"
            else f"d={m['d_model']}, {m['bigram_buckets']} bigram buckets per side"
        )
        lines += [
            f"## {arch}",
            "",
            f"{shape}, max_len {m['max_len']}, {r['parameters']:,} parameters; warm start: "
            f"{r['warm_start'] or 'none'}. {r['steps']} updates in {r['wall_time_s']:.0f} s "
            f"(stopped: {r['stop_reason']}; kept epoch {r['best_epoch']}). Threshold "
            f"{r['threshold']:.4f}; val ROC AUC {r['val']['roc_auc']:.3f}"
            + (
                f"; benign flag rate {r['val']['benign_flag_rate']:.3f}."
                if "benign_flag_rate" in r["val"]
                else "."
            ),
            "",
            header,
            _row("held-out train (threshold chosen here)", r["holdout"]),
            _row("val", r["val"]),
            _row("val at threshold 0.5", r["val"]["at_0.5"]),
            "",
            "Val per DiaSafety category (chosen threshold):",
            "",
            header.replace("| split |", "| category |"),
            *(_row(c, cm) for c, cm in r["val"]["per_category"].items()),
            "",
        ]
    lines.append(f"Total wall time {report['total_wall_time_s']:.0f} s.")
    return "\n".join(lines)
