"""The pipeline's settings: one pydantic model per configuration, each setting declared once.

`PrepareConfig` (ingest → validate → split) and `PipelineConfig` (the whole training pipeline) are
what the Prefect UI renders as the run form, what `--config FILE` holds, and where every CLI option
comes from (`flows.cli_options`). Training hyperparameters are not repeated here: a run names a
preset and overrides its fields (`gru4rec.config.TrainConfig`, `gru4rec.model.ModelConfig`) by
dotted key, so a setting such as the seed or the device exists in exactly one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gru4rec.baselines import BaselineName
from gru4rec.config import Gru4RecConfig
from gru4rec.data.config import IngestConfig, SplitConfig
from gru4rec.data.health import HealthThresholds
from gru4rec.errors import ConfigError
from gru4rec.evaluate import Ties, check_metric_name
from gru4rec.presets import PresetName, starting_config
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
    preset_file: str | None = Field(
        default=None,
        description="A preset file (JSON/YAML, e.g. the best_preset.json of `tune`) to start from instead of the "
        "named preset; the overrides still apply.",
    )

    @property
    def label(self) -> str:
        """What the model started from, for run names, tags and plot titles: the preset file's name
        (e.g. ``best_preset.json``) when one is given, else the preset."""
        return Path(self.preset_file).name if self.preset_file else self.preset

    def gru4rec_config(self) -> Gru4RecConfig:
        """The preset (or preset file) with the overrides applied (a ConfigError names a bad key or value)."""
        return starting_config(self.preset, self.preset_file, self.overrides)

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


class SearchSettings(_Strict):
    """How the Optuna study searches (`flows.tuning.hyperparameter_search`)."""

    n_trials: int = Field(default=20, ge=1, description="Trials of the study in all (a resumed search runs the rest).")
    timeout_minutes: float | None = Field(
        default=None, gt=0, description="Start no trial after this many minutes (running ones finish); none = no limit."
    )
    metric: str = Field(
        default="mrr@20", description="Validation metric optimised; a trial's value is its best epoch's."
    )
    direction: Literal["maximize", "minimize"] = Field(default="maximize", description="Optimisation direction.")
    epochs: int = Field(default=5, ge=1, description="Training epochs of each trial.")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of the TPE sampler.")
    startup_trials: int = Field(default=5, ge=0, description="Random trials before TPE models the results.")
    start_from_base: bool = Field(
        default=True,
        description="Trial 0 of a new study is the base configuration itself (when the search space holds its "
        "values), so the best preset is never worse on validation than where the search started.",
    )
    pruner: Literal["median", "none"] = Field(
        default="median", description="Stop a trial whose validation metric after an epoch is below the median."
    )
    prune_after_trials: int = Field(default=2, ge=0, description="Finished trials before any trial is pruned.")
    prune_warmup_epochs: int = Field(
        default=1, ge=0, description="Epochs of every trial that are never pruned (the first epoch is noisy)."
    )
    storage: str | None = Field(
        default=None,
        description="Optuna storage: any SQLAlchemy database URL (postgresql://…, mysql://…); "
        "none = SQLite file study.db in the output directory.",
    )
    study_name: str | None = Field(
        default=None, description="Study name in the storage; none = <preset>-<split fingerprint>."
    )
    heartbeat_seconds: int = Field(
        default=10,
        ge=1,
        description="A running trial records a heartbeat this often; one silent for 3 times as long (a killed "
        "search) is failed and queued again.",
    )


class DaskSettings(_Strict):
    """Where the trials run: a local Dask cluster (default) or an existing one."""

    n_workers: int = Field(
        default=2, ge=1, description="Trials run at once: the local cluster's workers (one trial each)."
    )
    address: str | None = Field(
        default=None,
        description="Scheduler address of an existing Dask cluster (tcp://host:8786) instead of a local one; its "
        "workers need this project installed, the data paths and PREFECT_API_URL.",
    )
    torch_threads: int = Field(default=1, ge=1, description="torch threads of each trial.")


class TuningConfig(_Strict):
    """Everything `tune` (the `hyperparameter_search` flow) needs."""

    split_dir: str = Field(
        default="runs/prepare",
        description="Split directory written by `prepare`: trained on train, judged on valid (test never read).",
    )
    preset: PresetName = Field(
        default="gru4rec-xe", description="Base configuration; its loss picks the search space (bpr-max or XE)."
    )
    preset_file: str | None = Field(default=None, description="A preset file to start from instead of the preset.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='Fixed settings by dotted key (not searched), e.g. {"train.device": "cpu", "model.layers": [100]}.',
    )
    search: SearchSettings = Field(default_factory=SearchSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)
    out_dir: str = Field(
        default="runs/tuning", description="Study database, plots, trials table and the best preset go here."
    )
    best_preset: str | None = Field(
        default=None, description="Where the best configuration is written (JSON/YAML); none = <out>/best_preset.json."
    )

    def base_config(self) -> Gru4RecConfig:
        """The starting configuration with the fixed overrides and the metric as early-stopping metric."""
        overrides = {**self.overrides, "train.early_stopping_metric": self.search.metric}
        return starting_config(self.preset, self.preset_file, overrides)

    @field_validator("out_dir")
    @classmethod
    def _out_dir(cls, v: str) -> str:
        return _not_a_file(v, "out_dir")

    @model_validator(mode="after")
    def _valid(self) -> TuningConfig:
        from gru4rec.tuning import search_space

        try:
            train = self.base_config().train
            search_space(train.loss, train.optimizer)  # the metric, the overrides, loss and optimiser, checked now
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self
