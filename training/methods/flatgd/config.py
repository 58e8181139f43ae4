"""FlatGD settings (Khalatbari et al.): the fine-tune's optimisation and the experts'. The named
values live in the config tree (training/config: ``paper`` is Table 5, ``small`` the same
schedule at a learning rate this CPU-sized base can move with)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlatGDSetting:
    """Optimisation of the FlatGD fine-tune (Adam, constant learning rate, last weights kept)."""

    name: str
    lr: float  # Table 5: 5e-6
    batch_size: int = 64  # DiaSafety pairs per update (Table 5: 64)
    epochs: int = 2  # passes over DiaSafety train (Table 5: 2)
    lm_batch_size: int = 64  # DailyDialog pairs per update in L_LM (ours; 0 = Safe rows only)
    eval_every: int = 70  # updates between validations (DailyDialog NLL, val L_S and its gradient)
    val_safety_pairs: int = 256  # DiaSafety val pairs in the validation L_S / ||∇L_S||² probe


@dataclass(frozen=True)
class ExpertSetting:
    """Fine-tuning one expert (the clean or the toxic one) with MLE."""

    epochs: int = 3  # passes over the label's DiaSafety train pairs
    batch_size: int = 64
    lr: float | None = None  # None: the constant rate where the base's schedule ended
