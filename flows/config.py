"""The pipeline's settings: one pydantic model per configuration, each setting declared once.

`PrepareConfig` (ingest → validate → split) and `PipelineConfig` (the whole training pipeline) are
what the Prefect UI renders as the run form, what `--config FILE` holds, and where every CLI option
comes from (`flows.cli_options`). Training hyperparameters are not repeated here: a run names a
preset and overrides its fields (`gru4rec.config.TrainConfig`, `gru4rec.model.ModelConfig`) by
dotted key, so a setting such as the seed or the device exists in exactly one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gru4rec.baselines import BaselineName
from gru4rec.config import Gru4RecConfig
from gru4rec.data.config import IngestConfig, SplitConfig
from gru4rec.data.health import HealthThresholds
from gru4rec.errors import ConfigError
from gru4rec.evaluate import Ties, check_metric_name
from gru4rec.presets import PresetName, get_preset
from gru4rec.seen import ExcludeSeen, normalise_setting
from tasks.notify import NotificationSettings
from tasks.validation import ValidationConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_a_file(value: str, setting: str) -> str:
    if Path(value).expanduser().is_file():
        raise ValueError(f"{setting} {value!r} is an existing file; it must be a directory (new or ours)")
    return value


class TrainingSettings(_Strict):
    preset: PresetName = Field(default="gru4rec-xe", description="Starting configuration (see the README's presets).")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='Preset fields to change, by dotted key: {"train.epochs": 5, "train.seed": 7, '
        '"train.device": "cpu", "model.layers": [200]} (keys: model.* and train.*, see the README).',
    )
    full: bool = Field(default=True, description="Train the registered model on train+valid (validation unused).")

    def gru4rec_config(self) -> Gru4RecConfig:
        """The preset with the overrides applied (a ConfigError names a bad key or value)."""
        return get_preset(self.preset, self.overrides)

    @model_validator(mode="after")
    def _overrides_valid(self) -> TrainingSettings:
        try:
            self.gru4rec_config()
        except ConfigError as e:  # pydantic reports ValueErrors with the field's location
            raise ValueError(str(e)) from None
        return self


class EvaluationSettings(_Strict):
    ks: list[int] = Field(default=[1, 5, 10, 20], description="Cut-offs K of the test metrics.")
    ties: Ties = Field(default="conservative", description="How items tied with the target rank.")
    baselines: list[BaselineName] = Field(
        default=["popularity", "item-knn"], description="Baselines evaluated on the same test targets."
    )
    exclude_seen: ExcludeSeen = Field(
        default="auto",
        description="Leave items already in the session out of the recommendations: in the test metrics and "
        "champion gate (a repeated target is then a miss) and as the registered model's default for recommend "
        "and pyfunc; auto = exclude when under 1% of the training data's (session, item) pairs repeat "
        "(MovieLens-style data), keep them otherwise (click logs).",
    )

    @field_validator("exclude_seen", mode="before")
    @classmethod
    def _exclude_seen(cls, v):
        try:
            return normalise_setting(v)  # JSON true/false and yes/no/1/0 → "true"/"false"
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError(f"ks must be a non-empty list of positive cut-offs, got {v}")
        return sorted(set(v))


class RegistrySettings(_Strict):
    name: str = Field(default="gru4rec", description="Registered model name in MLflow.")
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI; None = embedded SQLite under the workdir."
    )
    primary_metric: str = Field(default="mrr@20", description="Test metric that decides the champion.")
    min_gain: float = Field(
        default=0.0,
        ge=0.0,
        description="Relative improvement over the champion's score on the same test targets needed to replace "
        "it (0.01 = 1%).",
    )
    experiment: str = Field(default="gru4rec", description="MLflow experiment of the runs.")


class PipelineConfig(_Strict):
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    health: HealthThresholds = Field(
        default_factory=HealthThresholds, description="Data health: changes from the champion's data that warn."
    )
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    workdir: str = Field(default="runs", description="Run directories and the embedded MLflow store go here.")
    cache_data: bool = Field(
        default=True, description="Reuse ingest/validate/split results for the same source content and settings."
    )
    cache_training: bool = Field(default=False, description="Also reuse a trained model for the same split + settings.")

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        return _not_a_file(v, "workdir")

    @model_validator(mode="after")
    def _metric_names(self) -> PipelineConfig:
        # Found here, before any work, not as a KeyError after training.
        check_metric_name(self.registry.primary_metric, self.evaluation.ks, setting="registry.primary_metric")
        return self


class PrepareConfig(_Strict):
    """Everything `prepare` (ingest → validate → split) needs."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    out_dir: str = Field(default="runs/prepare", description="Split directory to write.")

    @field_validator("out_dir")
    @classmethod
    def _out_dir(cls, v: str) -> str:
        return _not_a_file(v, "out_dir")
