"""Named configurations and dotted-key overrides.

``get_preset("gru4rec-xe", {"train.lr": "0.1", "model.layers": "[200]"})`` returns a validated
`Gru4RecConfig`; values may be strings (as typed on a command line) — JSON is tried first, then
pydantic coerces. An unknown key is a `ConfigError` naming it and listing the valid keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from gru4rec.config import Gru4RecConfig, TrainConfig
from gru4rec.errors import ConfigError, validation_errors_text
from gru4rec.model import ModelConfig

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The reference tutorial: one-hot input, 50 GRU units, full softmax cross-entropy, Adam.
    "tutorial": {
        "model": {"embedding": "onehot", "layers": [50], "dropout_embedding": 0.0, "dropout_hidden": 0.1},
        "train": {
            "loss": "cross-entropy",
            "n_sample": "full",
            "optimizer": "adam",
            "lr": 0.001,
            "momentum": 0.0,
            "batch_size": 64,
            "loss_scale": "mean",  # the tutorial's Keras model averages over each batch's rows
            "epochs": 20,
        },
    },
    # GRU4Rec with sampled cross-entropy + logQ correction (the authors' published XE setting shape).
    "gru4rec-xe": {
        "model": {"embedding": "constrained", "layers": [100], "dropout_embedding": 0.0, "dropout_hidden": 0.4},
        "train": {
            "loss": "cross-entropy",
            "logq": 1.0,
            "n_sample": 2048,
            "sample_alpha": 0.5,
            "optimizer": "adagrad",
            "lr": 0.2,
            "momentum": 0.2,
            "batch_size": 32,
            "epochs": 10,
        },
    },
    # GRU4Rec with BPR-max (2018): ELU(0.5) final activation, score regularisation 1.95.
    "gru4rec-bprmax": {
        "model": {"embedding": "constrained", "layers": [224], "dropout_embedding": 0.5, "dropout_hidden": 0.05},
        "train": {
            "loss": "bpr-max",
            "bpreg": 1.95,
            "elu": 0.5,
            "n_sample": 2048,
            "sample_alpha": 0.4,
            "optimizer": "adagrad",
            "lr": 0.05,
            "momentum": 0.4,
            "batch_size": 80,
            "epochs": 10,
        },
    },
}

# The preset names as a type (the Prefect form and the CLI offer exactly these).
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def valid_keys() -> list[str]:
    return [f"model.{k}" for k in ModelConfig.model_fields] + [f"train.{k}" for k in TrainConfig.model_fields]


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # plain strings ("adam", "full") and anything pydantic can still coerce
    return value


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Gru4RecConfig:
    data = {"model": dict(base.get("model", {})), "train": dict(base.get("train", {}))}
    keys = valid_keys()
    for key, value in overrides.items():
        if key not in keys:
            raise ConfigError(f"unknown setting {key!r}; valid keys: {', '.join(keys)}")
        section, name = key.split(".", 1)
        data[section][name] = _parse(value)
    try:
        return Gru4RecConfig.model_validate(data)
    except ValidationError as e:
        problems = validation_errors_text(e)
        raise ConfigError(f"invalid configuration: {problems}") from None


def get_preset(name: str, overrides: Mapping[str, Any] | None = None) -> Gru4RecConfig:
    """A preset by name with dotted-key overrides applied (``{"train.lr": "0.1"}``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name], overrides or {})


# ------------------------------------------------------------------------------------------------
# preset files: a full configuration in a file (the hyperparameter search writes its best one so)

PRESET_FILE_FORMAT = "gru4rec-preset/1"


def _read_structured(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # a Prefect dependency; only needed for YAML preset files

        return yaml.safe_load(text)
    return json.loads(text)


def read_preset_file(path: str | Path) -> dict[str, Any]:
    """The preset file's content: ``{"format", "name", "config": {"model", "train"}, ...}`` (JSON or YAML)."""
    path = Path(path).expanduser()
    try:
        data = _read_structured(path)
    except Exception as e:  # a missing/unreadable file, bad JSON, bad YAML (yaml.YAMLError)
        raise ConfigError(f"cannot read preset file {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(
            f"preset file {path} must hold an object with a 'config' of 'model' and 'train' settings "
            f"(format {PRESET_FILE_FORMAT}, as `gru4rec-pipeline tune` writes it)"
        )
    return data


def load_preset_file(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Gru4RecConfig:
    """The configuration of a preset file, with dotted-key overrides applied like `get_preset`'s."""
    data = read_preset_file(path)
    try:
        return apply_overrides(data["config"], overrides or {})
    except ConfigError as e:
        raise ConfigError(f"preset file {path}: {e}") from None


def starting_config(
    preset: str, preset_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Gru4RecConfig:
    """What a training or a search starts from: the preset file when one is given, else the named
    preset; the dotted-key overrides applied either way."""
    if preset_file:
        return load_preset_file(preset_file, overrides)
    return get_preset(preset, overrides)


def write_preset_file(path: str | Path, cfg: Gru4RecConfig, name: str, **extra: Any) -> Path:
    """Write ``cfg`` as a preset file (JSON, or YAML for a .yaml/.yml name); ``extra`` is kept beside it."""
    from gru4rec.io import atomic_path

    path = Path(path).expanduser()
    data = {"format": PRESET_FILE_FORMAT, "name": name, "config": cfg.model_dump(mode="json"), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
