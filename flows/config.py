"""Configuration of the end-to-end training pipeline: one pydantic object, rendered by the
Prefect UI as the run form and logged whole with every run (Prefect parameters, MLflow params)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gru4rec.data.config import IngestConfig, SplitConfig
from tasks.validation import ValidationConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Strict):
    preset: Literal["tutorial", "gru4rec-xe", "gru4rec-bprmax"] = Field(
        default="gru4rec-xe", description="Starting configuration (see the README's presets)."
    )
    overrides: dict[str, str] = Field(
        default_factory=dict, description='Dotted overrides, e.g. {"train.lr": "0.1", "model.layers": "[200]"}.'
    )
    epochs: int | None = Field(default=None, ge=1, description="Epochs; None = the preset's.")
    seed: int = Field(default=42, description="Seed of initialisation, sampling and batching.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(default="auto", description="Training device.")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for PyTorch; None = PyTorch's default.")
    full: bool = Field(default=True, description="Train the registered model on train+valid (validation unused).")


class EvaluationSettings(_Strict):
    ks: list[int] = Field(default=[1, 5, 10, 20], description="Cut-offs of the metrics.")
    ties: Literal["conservative", "standard", "median"] = Field(default="conservative")
    baselines: list[Literal["popularity", "item-knn"]] = Field(default=["popularity", "item-knn"])


class RegistrySettings(_Strict):
    name: str = Field(default="gru4rec", description="Registered model name in MLflow.")
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI; None = embedded SQLite under the workdir."
    )
    primary_metric: str = Field(default="mrr@20", description="Decides whether a new version becomes champion.")
    experiment: str = Field(default="gru4rec")


class PipelineConfig(_Strict):
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelSettings = Field(default_factory=ModelSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    workdir: str = Field(default="runs", description="Run directories and the embedded MLflow store go here.")
    cache_data: bool = Field(
        default=True, description="Reuse ingest/validate/split results for the same source content and settings."
    )
    cache_training: bool = Field(default=False, description="Also reuse a trained model for the same split + settings.")


class PrepareConfig(_Strict):
    """Everything `prepare` (ingest → validate → split) needs."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    out_dir: str = Field(default="runs/prepare", description="Split directory to write.")

