"""MLflow tracking and model registry: log a trained model directory, register a version, and
decide whether it becomes the `champion`.

Embedded by default: a SQLite store and a local artifact directory (no server needed); a
tracking URI points it at an MLflow server instead. The model is logged as a pyfunc "model from
code" (`tasks/mlflow_model.py`) plus the model directory and the `gru4rec` package as code, with
explicit pip requirements, so nothing is pickled and nothing has to be inferred.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class RegistrationResult:
    registry_name: str
    version: str
    alias: str
    decision: str
    candidate_metric: float
    champion_metric: float | None
    champion_version: str | None
    run_id: str
    experiment_id: str
    tracking_uri: str
    run_url: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def embedded_tracking_uri(base_dir: str | Path) -> tuple[str, str]:
    """SQLite tracking/registry store and artifact root under base_dir."""
    base = Path(base_dir).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    (base / "artifacts").mkdir(exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}", (base / "artifacts").as_uri()


def metric_key(name: str) -> str:
    """MLflow metric names cannot hold '@': recall@20 → recall_at_20."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name.replace("@", "_at_"))


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in ("torch", "numpy", "pandas", "polars", "pyarrow", "safetensors", "pydantic", "mlflow", "scipy"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version.split('+')[0]}")  # drop local build tags such as +cpu
    return reqs


def pyfunc_signature():
    """Input: column ``items`` (a list of item ids per session, ints or strings); params k, exclude_seen."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "items")]),
        outputs=Schema(
            [
                ColSpec(AnyType(), "items"),
                ColSpec(Array(DataType.double), "scores"),
                ColSpec(AnyType(), "unknown_items"),
                ColSpec(DataType.boolean, "fallback"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", DataType.long, 20), ParamSpec("exclude_seen", DataType.boolean, False)]),
    )


def _log_pyfunc(mlflow, model_dir, registry_name: str):
    import gru4rec

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("mlflow_model.py")),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(gru4rec.__file__).parent)],
        pip_requirements=_pip_requirements(),
        signature=pyfunc_signature(),
        registered_model_name=registry_name,
    )


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def log_and_register(
    model_dir: str | Path,
    *,
    metrics: dict[str, float],
    config: dict,
    split_fingerprint: str,
    data_manifest_hash: str,
    registry_name: str = "gru4rec",
    primary_metric: str = "mrr@20",
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    experiment: str = "gru4rec",
    tags: dict[str, str] | None = None,
    extra_artifacts: list[str | Path] | None = None,
    run_name: str | None = None,
) -> RegistrationResult:
    """Log the run and model, register a version, and set `champion` or `challenger`.

    The new version becomes champion only if there is no champion yet, or if the champion was
    evaluated on the same dataset and split (same fingerprint) and the new version's primary
    metric is strictly higher. The decision and both numbers are stored as version tags.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if primary_metric not in metrics:
        raise KeyError(f"primary metric {primary_metric!r} not among the evaluated metrics {sorted(metrics)}")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)

    candidate = float(metrics[primary_metric])
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params({k[:250]: v[:6000] for k, v in _flatten(config).items()})
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        mlflow.set_tags(
            {"split_fingerprint": split_fingerprint, "data_manifest_hash": data_manifest_hash, **(tags or {})}
        )
        mlflow.log_dict(config, "config.json")
        for path in extra_artifacts or []:
            mlflow.log_artifact(str(path))
        with warnings.catch_warnings():
            # Our predict takes a DataFrame of sessions; the signature is explicit, so MLflow's
            # hints about type hints and input examples do not apply.
            warnings.filterwarnings("ignore", message=".*type hints.*")
            warnings.filterwarnings("ignore", message=".*input example.*")
            info = _log_pyfunc(mlflow, model_dir, registry_name)
        version = str(info.registered_model_version)

    champion_version = champion_metric = None
    try:
        champ = client.get_model_version_by_alias(registry_name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None or str(champ.version) == version:
        alias, decision = CHAMPION, "first version registered: becomes champion"
    else:
        champion_version = str(champ.version)
        raw = champ.tags.get("primary_metric_value")
        champion_metric = float(raw) if raw is not None else None
        same_split = champ.tags.get("split_fingerprint") == split_fingerprint
        same_metric = champ.tags.get("primary_metric") == primary_metric
        if not same_split:
            alias = CHALLENGER
            decision = (
                f"not comparable: champion v{champion_version} was evaluated on another dataset/split "
                f"(fingerprint {str(champ.tags.get('split_fingerprint'))[:12]} vs {split_fingerprint[:12]}); "
                "champion unchanged"
            )
        elif not same_metric or champion_metric is None:
            alias = CHALLENGER
            decision = f"not comparable: champion v{champion_version} has no {primary_metric}; champion unchanged"
        elif candidate > champion_metric:
            alias = CHAMPION
            decision = f"{primary_metric} {candidate:.4f} beats champion v{champion_version} ({champion_metric:.4f})"
        else:
            alias = CHALLENGER
            decision = (
                f"{primary_metric} {candidate:.4f} does not beat champion v{champion_version} "
                f"({champion_metric:.4f}); champion unchanged"
            )

    for key, value in {
        "split_fingerprint": split_fingerprint,
        "data_manifest_hash": data_manifest_hash,
        "primary_metric": primary_metric,
        "primary_metric_value": repr(candidate),
        "champion_metric_value": "" if champion_metric is None else repr(champion_metric),
        "decision": decision,
        "alias": alias,
        **(tags or {}),
    }.items():
        client.set_model_version_tag(registry_name, version, key, value)
    client.set_registered_model_alias(registry_name, alias, version)

    run_url = None
    if tracking_uri and tracking_uri.startswith("http"):
        run_url = f"{tracking_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    return RegistrationResult(
        registry_name=registry_name,
        version=version,
        alias=alias,
        decision=decision,
        candidate_metric=candidate,
        champion_metric=champion_metric,
        champion_version=champion_version,
        run_id=run.info.run_id,
        experiment_id=exp_id,
        tracking_uri=tracking_uri or mlflow.get_tracking_uri(),
        run_url=run_url,
    )
