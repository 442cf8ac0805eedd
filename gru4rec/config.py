"""Typed configuration of training: `TrainConfig`, and `Gru4RecConfig` = model + train in one object.

`Gru4RecConfig` round-trips through JSON (``cfg.model_dump_json()`` / ``Gru4RecConfig.model_validate_json``)
and is stored whole in every checkpoint and model directory. Named starting points live in
`gru4rec.presets`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gru4rec.device import DeviceName
from gru4rec.evaluate import Ties, check_metric_name
from gru4rec.losses import LossName
from gru4rec.model import ModelConfig
from gru4rec.seen import ExcludeSeen, normalise_setting


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss: LossName = Field(default="cross-entropy", description="Training loss.")
    logq: float = Field(
        default=0.0, ge=0, description="Cross-entropy logQ correction strength (0 = off); see gru4rec.losses."
    )
    logq_base: Literal["probability", "count"] = Field(
        default="probability",
        description="What the logQ correction takes the log of: 'probability' = each column's candidate "
        "probability (frequency for the in-batch targets, count^alpha / Σ count^alpha for the samples); 'count' = "
        "the raw count and count^alpha (GRU4Rec's reference code: in-batch columns relatively lower by "
        "logq · log(Σ count / Σ count^alpha)).",
    )
    bpreg: float = Field(default=0.0, ge=0, description="BPR-max score regularisation weight.")
    elu: float = Field(
        default=0.0, ge=0, description="Final activation for the ranking losses: ELU with this alpha (0 = linear)."
    )
    n_sample: int | Literal["full"] = Field(
        default=2048,
        description="Extra negatives shared by the mini-batch (0 = in-batch only), or 'full' = whole catalogue.",
    )
    sample_alpha: float = Field(
        default=0.5, ge=0, le=1, description="Negatives drawn ∝ popularity^alpha (0 = uniform over train items)."
    )
    batch_size: int = Field(default=32, ge=1, description="Session-parallel mini-batch size.")
    loss_scale: Literal["batch_size", "mean"] = Field(
        default="batch_size",
        description="What a mini-batch's summed loss is divided by: 'batch_size' = the configured batch_size, "
        "also when the batch has shrunk at the end of an epoch (GRU4Rec's reference: the few long sessions "
        "left at the end of an epoch weigh no more than their share of a full batch); 'mean' = its own rows "
        "(those last updates then get full-batch weight: far worse on long sessions, see the README).",
    )
    optimizer: Literal["adagrad", "adam"] = Field(default="adagrad")
    lr: float = Field(default=0.2, gt=0, description="Learning rate.")
    momentum: float = Field(default=0.0, ge=0, lt=1, description="Adagrad momentum (ignored by Adam).")
    epochs: int = Field(default=10, ge=1)
    seed: int = Field(
        default=42, ge=0, le=2**63 - 1, description="Seeds torch, numpy and random: CPU runs repeat bit for bit."
    )
    device: DeviceName = Field(default="auto", description="Training device: auto = CUDA, then MPS, then CPU.")
    threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads when given.")
    bf16: bool = Field(default=False, description="bfloat16 autocast of the forward pass (CUDA only).")
    early_stopping_metric: str = Field(default="mrr@20", description="Validation metric to select the best epoch.")
    patience: int = Field(default=0, ge=0, description="Epochs without improvement before stopping; 0 = off.")
    eval_ks: list[int] = Field(default=[1, 5, 10, 20], description="Cut-offs of the validation metrics.")
    eval_ties: Ties = Field(default="conservative", description="How tied scores rank in validation metrics.")
    eval_exclude_seen: ExcludeSeen = Field(
        default="auto",
        description="Leave the session's own items out of the validation ranking (early stopping, tuning); "
        "auto = when under 1% of the training data's (session, item) pairs repeat, as evaluation decides.",
    )
    progress: bool = Field(default=True, description="Show a progress bar.")

    @field_validator("n_sample", mode="before")
    @classmethod
    def _n_sample(cls, v):
        if isinstance(v, str) and v.strip().lower() != "full":
            try:
                v = int(v)
            except ValueError:
                raise ValueError(f"n_sample must be an integer >= 0 or 'full', got {v!r}") from None
        if isinstance(v, str):
            return "full"
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"n_sample must be an integer >= 0 or 'full', got {v!r}")
        return v

    @field_validator("eval_exclude_seen", mode="before")
    @classmethod
    def _exclude_seen(cls, v):
        return normalise_setting(v)

    @field_validator("eval_ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError(f"eval_ks must be a non-empty list of positive cut-offs, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        check_metric_name(self.early_stopping_metric, self.eval_ks, setting="train.early_stopping_metric")
        if self.logq > 0 and self.loss != "cross-entropy":
            raise ValueError(f"logq is a cross-entropy option; loss is {self.loss!r} (set logq to 0)")
        if self.elu > 0 and self.loss == "cross-entropy":
            raise ValueError(
                "elu is the final activation of the ranking losses; cross-entropy uses softmax (set elu 0)"
            )
        return self


class Gru4RecConfig(BaseModel):
    """Everything needed to build and train a model: one object, JSON-round-trippable."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
