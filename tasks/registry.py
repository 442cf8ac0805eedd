"""MLflow tracking and model registry: log a trained model directory, register a version, and
decide whether it becomes the `champion`.

Embedded by default: a SQLite store and a local artifact directory (no server needed); a
tracking URI points it at an MLflow server instead. The model is logged as a pyfunc "model from
code" (`tasks/mlflow_model.py`) plus the model directory and the `gru4rec` modules inference
imports (found from the imports at log time) as code, with explicit pip requirements, so nothing
is pickled and nothing has to be inferred.

The champion/challenger rule is the pure function `decide_alias`; `log_and_register` logs,
registers, reads the champion, decides and records. With a `registration_key` it is safe to
retry: a version already registered under that key is returned (or finished), not duplicated.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gru4rec.faults import kill_point

CHAMPION, CHALLENGER = "champion", "challenger"
REGISTRATION_KEY_TAG = "registration_key"
ALIAS_TAG = "alias"  # written last: a version carrying it is fully registered
PREVIOUS_CHAMPION_TAG = "previous_champion"
PROFILE_ARTIFACT = "data_profile.json"  # what the model was trained on (gru4rec.data.health)
TRAINING_KEY_TAG = "training_key"  # split content + settings + code: equal keys = the same model
MLFLOW_MODEL_FILE = Path(__file__).with_name("mlflow_model.py")
LIBRARY = "gru4rec"
STORE_LOCK_TIMEOUT_S = 600  # a registration holds it for seconds; a stuck one is an error, not a hang
CAS_ATTEMPTS = 5


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
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChampionInfo:
    """What the decision needs of the current champion version (read from its tags)."""

    version: str
    split_fingerprint: str | None
    primary_metric: str | None
    metric_value: float | None
    exclude_seen: bool = False  # evaluated with the session's items left out (tag; absent = kept)


@dataclass(frozen=True)
class HeadToHead:
    """The champion evaluated on the candidate's test split (same targets, same evaluator code)."""

    champion_version: str
    value: float  # the champion's primary metric there
    unknown_targets: int  # targets the champion never saw (counted as misses)
    n_targets: int
    test_fingerprint: str


@dataclass(frozen=True)
class Decision:
    alias: str
    reason: str
    champion_version: str | None
    champion_metric: float | None
    warnings: tuple[str, ...] = ()


def embedded_tracking_uri(base_dir: str | Path) -> tuple[str, str]:
    """SQLite tracking/registry store and artifact root under base_dir."""
    base = Path(base_dir).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    (base / "artifacts").mkdir(exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}", (base / "artifacts").as_uri()


def store_locations(tracking_uri: str | None, workdir: str | Path) -> tuple[str, str | None]:
    """(tracking URI, artifact root) of a run: the embedded store under the workdir by default; a
    SQLite URI keeps its artifacts beside the database (not in ./mlruns of the current directory);
    a server decides its own artifact root."""
    if tracking_uri is None:
        return embedded_tracking_uri(Path(workdir) / "mlflow")
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}", (db.parent / "artifacts").as_uri()
    return tracking_uri, None


def metric_key(name: str) -> str:
    """MLflow metric names cannot hold '@': recall@20 → recall_at_20."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name.replace("@", "_at_"))


# ---------------------------------------------------------------- the decision (pure)


def _loses_to_knn(candidate: float, primary_metric: str, baselines: dict[str, float]) -> tuple[str, ...]:
    return tuple(
        f"WARNING: loses to the {name} baseline on {primary_metric} ({candidate:.4f} < {value:.4f})"
        for name, value in sorted(baselines.items())
        if "knn" in name and value > candidate
    )


def _champion_value(
    primary_metric: str,
    split_fingerprint: str,
    champion: ChampionInfo,
    head_to_head: HeadToHead | None,
    exclude_seen: bool = False,
) -> tuple[float | None, str]:
    """The champion's number to beat and how it was obtained ("" = its own value on this same
    split, with the same seen-items setting), or (None, why they are not comparable)."""
    same_split = champion.split_fingerprint == split_fingerprint
    same_metric = champion.primary_metric == primary_metric and champion.exclude_seen == exclude_seen
    if same_split and same_metric and champion.metric_value is not None:
        return champion.metric_value, ""
    if head_to_head is not None and head_to_head.champion_version == champion.version:
        return head_to_head.value, (
            f" [champion re-evaluated on this run's test split; {head_to_head.unknown_targets:,} of its "
            f"{head_to_head.n_targets:,} targets are items it never saw, counted as misses]"
        )
    if same_split and champion.exclude_seen != exclude_seen:
        return None, (
            f"not comparable: champion v{champion.version} was evaluated with seen items "
            f"{'excluded' if champion.exclude_seen else 'kept'}, this version with them "
            f"{'excluded' if exclude_seen else 'kept'}; champion unchanged"
        )
    if same_split:
        return None, f"not comparable: champion v{champion.version} has no {primary_metric}; champion unchanged"
    return None, (
        f"not comparable: champion v{champion.version} was evaluated on another dataset/split "
        f"(fingerprint {str(champion.split_fingerprint)[:12]} vs {split_fingerprint[:12]}); champion unchanged"
    )


def decide_alias(
    candidate_value: float,
    primary_metric: str,
    split_fingerprint: str,
    champion: ChampionInfo | None,
    *,
    candidate_version: str | None = None,
    head_to_head: HeadToHead | None = None,
    popularity: float | None = None,
    baselines: dict[str, float] | None = None,
    min_gain: float = 0.0,
    data_warnings: tuple[str, ...] = (),
    exclude_seen: bool = False,
) -> Decision:
    """Champion or challenger for a candidate with `candidate_value` of `primary_metric`
    (evaluated with the session's items left out when `exclude_seen`).

    - Never champion if it does not beat the popularity baseline on its own test split.
    - Champion if there is no champion yet (or the champion already is this version).
    - Otherwise it must beat the champion by more than `min_gain` (relative): the champion's
      recorded value when both were tested on the same split, else the champion's value on the
      candidate's test split (`head_to_head`); without either they are not comparable.
    A candidate that loses to a kNN baseline, or whose data drifted from the champion's
    (`data_warnings`), is flagged in `warnings` and in the reason; neither blocks it.
    """
    warnings_ = _loses_to_knn(candidate_value, primary_metric, baselines or {})
    warnings_ += tuple(f"DATA WARNING: {w}" for w in data_warnings)
    flagged = "".join(f"; {w}" for w in warnings_)
    if popularity is not None and not candidate_value > popularity:
        reason = (
            f"{primary_metric} {candidate_value:.4f} does not beat the popularity baseline ({popularity:.4f}) "
            f"on its own test split: never promoted{flagged}"
        )
        cv = champion.version if champion else None
        return Decision(CHALLENGER, reason, cv, champion.metric_value if champion else None, warnings_)
    if champion is None or (candidate_version is not None and champion.version == candidate_version):
        return Decision(CHAMPION, "first version registered: becomes champion" + flagged, None, None, warnings_)
    cv = champion.version
    cm, basis = _champion_value(primary_metric, split_fingerprint, champion, head_to_head, exclude_seen)
    if cm is None:
        return Decision(CHALLENGER, basis + flagged, cv, champion.metric_value, warnings_)
    gain = f" by more than {min_gain:.1%}" if min_gain > 0 else ""
    if candidate_value > cm and candidate_value > cm * (1.0 + min_gain):
        reason = f"{primary_metric} {candidate_value:.4f} beats champion v{cv} ({cm:.4f}){gain}"
        return Decision(CHAMPION, f"{reason}{basis}{flagged}", cv, cm, warnings_)
    reason = f"{primary_metric} {candidate_value:.4f} does not beat champion v{cv} ({cm:.4f}){gain}; champion unchanged"
    return Decision(CHALLENGER, f"{reason}{basis}{flagged}", cv, cm, warnings_)


# ---------------------------------------------------------------- what the MLflow model ships


def _imported_library_modules(path: Path, module: str, is_package: bool) -> set[str]:
    """Dotted names of `gru4rec` modules (and of names inside them) that a source file imports,
    anywhere in the file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return {n for n in names if n == LIBRARY or n.startswith(LIBRARY + ".")}


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def library_import_closure(entry: Path = MLFLOW_MODEL_FILE) -> list[Path]:
    """Files of the `gru4rec` package that `entry` needs, transitively, relative to the package's
    parent directory: the modules it imports, what they import, and their packages' __init__.py."""
    import gru4rec

    root = Path(gru4rec.__file__).resolve().parent.parent
    todo = sorted(_imported_library_modules(entry, entry.stem, False))
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and every package above it
            mod = ".".join(parts[:i])
            path = _module_file(root, mod)
            if mod in seen or path is None:
                continue
            seen[mod] = path
            todo.extend(_imported_library_modules(path, mod, path.name == "__init__.py"))
    return sorted(p.relative_to(root) for p in seen.values())


def stage_inference_code(dest: Path, files: Iterable[Path] | None = None) -> Path:
    """Copy the inference closure into dest (keeping the package layout); return dest/gru4rec."""
    import gru4rec

    root = Path(gru4rec.__file__).resolve().parent.parent
    for rel in library_import_closure() if files is None else files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return dest / LIBRARY


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
        # exclude_seen None (not given) = the model's own setting (see tasks/mlflow_model.py)
        params=ParamSchema([ParamSpec("k", DataType.long, 20), ParamSpec("exclude_seen", DataType.boolean, None)]),
    )


def _log_pyfunc(mlflow, model_dir, registry_name: str, version_tags: dict[str, str] | None = None):
    """Log the pyfunc and register it; `version_tags` are set atomically with the new version."""
    with tempfile.TemporaryDirectory(prefix="gru4rec-code-") as tmp, warnings.catch_warnings():
        # Our predict takes a DataFrame of sessions; the signature is explicit, so MLflow's
        # hints about type hints and input examples do not apply.
        warnings.filterwarnings("ignore", message=".*type hints.*")
        warnings.filterwarnings("ignore", message=".*input example.*")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MLFLOW_MODEL_FILE),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(stage_inference_code(Path(tmp)))],
            pip_requirements=_pip_requirements(),
            signature=pyfunc_signature(),
            registered_model_name=registry_name,
            tags=version_tags or None,
        )


# ---------------------------------------------------------------- tracking and registry steps


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def _float_or_none(raw: str | None) -> float | None:
    return float(raw) if raw not in (None, "") else None


@contextlib.contextmanager
def store_lock(tracking_uri: str | None):
    """Exclusive access to a SQLite store across processes (a lock file beside the database).

    Held while the store is first opened (MLflow creates and migrates its schema then; two
    processes doing that at once crash) and from reading the champion to moving the alias. A
    tracking server has no such lock: `_decide_and_record` re-checks the champion instead.
    """
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        from filelock import FileLock

        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S):
            yield
    else:
        yield


def connect(tracking_uri: str | None):
    """Point the fluent API at tracking_uri (tracking and registry) and return a client for it,
    the store's schema created (or migrated) under the store lock."""
    import mlflow
    from mlflow import MlflowClient

    with store_lock(tracking_uri):  # opening the stores creates/migrates their tables
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
        mlflow.search_experiments(max_results=1)  # the fluent API's own store instance
    return client


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location)


def log_run(
    model_dir: str | Path,
    *,
    experiment_id: str,
    registry_name: str,
    metrics: dict[str, float],
    config: dict,
    run_tags: dict[str, str],
    extra_artifacts: list[str | Path] | None = None,
    run_name: str | None = None,
    version_tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """One run: params, metrics, tags, config and extra artifacts, and the pyfunc model,
    registered as a new version of registry_name. Returns (run_id, version)."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params({k[:250]: v[:6000] for k, v in _flatten(config).items()})
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        log_history(mlflow, Path(model_dir) / "history.json")
        mlflow.set_tags(run_tags)
        mlflow.log_dict(config, "config.json")
        for path in extra_artifacts or []:
            mlflow.log_artifact(str(path))
        info = _log_pyfunc(mlflow, model_dir, registry_name, version_tags)
        kill_point("registry-version-created")  # the version exists, untagged, its run still RUNNING
    return run.info.run_id, str(info.registered_model_version)


def log_history(mlflow, history_file: Path) -> None:
    """Every per-epoch number of the training (loss, events/s, validation metrics) with step =
    epoch, so MLflow's charts show curves."""
    if not history_file.is_file():
        return
    for record in json.loads(history_file.read_text(encoding="utf-8")):
        numbers = {
            f"epoch_{metric_key(k)}": float(v)
            for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        mlflow.log_metrics(numbers, step=int(record["epoch"]))


def read_champion(client, registry_name: str) -> ChampionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        champ = client.get_model_version_by_alias(registry_name, CHAMPION)
    except MlflowException:
        return None
    return ChampionInfo(
        version=str(champ.version),
        split_fingerprint=champ.tags.get("split_fingerprint"),
        primary_metric=champ.tags.get("primary_metric"),
        metric_value=_float_or_none(champ.tags.get("primary_metric_value")),
        exclude_seen=champ.tags.get("exclude_seen") == "true",
    )


def record_decision(client, registry_name: str, version: str, decision: Decision, version_tags: dict[str, str]) -> None:
    """Tag the version with the decision and its inputs, set the alias, and last the `alias` tag
    (so a version with an `alias` tag is known to be fully registered)."""
    tags = {
        **version_tags,
        "champion_metric_value": "" if decision.champion_metric is None else repr(decision.champion_metric),
        "champion_version": decision.champion_version or "",
        "decision": decision.reason,
        "warnings": json.dumps(list(decision.warnings)),
    }
    if decision.alias == CHAMPION:  # what a rollback returns to
        tags[PREVIOUS_CHAMPION_TAG] = decision.champion_version or ""
    for key, value in tags.items():
        client.set_model_version_tag(registry_name, version, key, value)
    kill_point("registry-tagged")  # tags written, alias not yet moved
    client.set_registered_model_alias(registry_name, decision.alias, version)
    kill_point("registry-alias-set")  # alias moved, the final `alias` tag not yet written
    client.set_model_version_tag(registry_name, version, ALIAS_TAG, decision.alias)


def fail_interrupted_runs(tracking_uri: str | None, experiment: str, run_key: str) -> list[str]:
    """Mark FAILED the MLflow runs of this pipeline run (tag ``run_key``) still RUNNING: their
    process was killed (a live run holds the run directory's lock, so none of them is live)."""
    client = connect(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    stuck = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.run_key = '{run_key}' AND attributes.status = 'RUNNING'"
    )
    for run in stuck:
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in stuck]


def find_version_by_key(client, registry_name: str, registration_key: str):
    """The (first) version of registry_name tagged registration_key, or None."""
    if "'" in registration_key or "'" in registry_name:
        raise ValueError(f"registration key and model name cannot contain a quote: {registration_key!r}")
    found = client.search_model_versions(
        f"name = '{registry_name}' AND tags.{REGISTRATION_KEY_TAG} = '{registration_key}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class Evidence:
    """What the champion decision weighs besides the candidate's primary metric."""

    head_to_head: HeadToHead | None = None
    popularity: float | None = None  # the popularity baseline's primary metric on the same targets
    baselines: dict[str, float] | None = None  # every baseline's primary metric
    min_gain: float = 0.0
    data_warnings: tuple[str, ...] = ()  # the data health check's findings
    exclude_seen: bool = False  # the candidate was evaluated with the session's items left out

    def tags(self) -> dict[str, str]:
        tags = {"min_gain": repr(self.min_gain), "baselines": json.dumps(self.baselines or {}, sort_keys=True)}
        tags["exclude_seen"] = "true" if self.exclude_seen else "false"  # what primary_metric_value was measured with
        if self.head_to_head is not None:
            h = self.head_to_head
            tags |= {
                "head_to_head_champion_version": h.champion_version,
                "head_to_head_champion_value": repr(h.value),
                "head_to_head_unknown_targets": str(h.unknown_targets),
                "head_to_head_targets": str(h.n_targets),
                "head_to_head_test_fingerprint": h.test_fingerprint,
            }
        return tags


def _decision_for(
    client,
    registry_name: str,
    version: str,
    candidate: float,
    primary_metric: str,
    split_fingerprint: str,
    recorded: dict[str, str],
    evidence: Evidence = Evidence(),
) -> Decision:
    """Decide against the current champion; if a retried registration already made this version
    champion (it died before its last tag), keep the decision it recorded."""
    champion = read_champion(client, registry_name)
    if champion is not None and champion.version == version and "decision" in recorded:
        return Decision(
            CHAMPION,
            recorded["decision"],
            recorded.get("champion_version") or None,
            _float_or_none(recorded.get("champion_metric_value")),
            tuple(json.loads(recorded.get("warnings") or "[]")),
        )
    return decide_alias(
        candidate,
        primary_metric,
        split_fingerprint,
        champion,
        candidate_version=version,
        head_to_head=evidence.head_to_head,
        popularity=evidence.popularity,
        baselines=evidence.baselines,
        min_gain=evidence.min_gain,
        data_warnings=evidence.data_warnings,
        exclude_seen=evidence.exclude_seen,
    )


def _result(
    client, tracking_uri, registry_name, version, run_id, decision: Decision, candidate: float, experiment_id=None
) -> RegistrationResult:
    import mlflow

    experiment_id = experiment_id or client.get_run(run_id).info.experiment_id
    run_url = None
    if tracking_uri and tracking_uri.startswith("http"):
        run_url = f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return RegistrationResult(
        registry_name=registry_name,
        version=version,
        alias=decision.alias,
        decision=decision.reason,
        candidate_metric=candidate,
        champion_metric=decision.champion_metric,
        champion_version=decision.champion_version,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri or mlflow.get_tracking_uri(),
        run_url=run_url,
        warnings=list(decision.warnings),
    )


def _recorded_result(client, tracking_uri, registry_name: str, mv) -> RegistrationResult:
    """The result of a completed registration, from its version's tags."""
    tags = mv.tags
    decision = Decision(
        tags[ALIAS_TAG],
        tags.get("decision", ""),
        tags.get("champion_version") or None,
        _float_or_none(tags.get("champion_metric_value")),
        tuple(json.loads(tags.get("warnings") or "[]")),
    )
    candidate = float(tags["primary_metric_value"])
    return _result(client, tracking_uri, registry_name, str(mv.version), mv.run_id, decision, candidate)


# ---------------------------------------------------------------- entry point


def _decide_and_record(
    client,
    tracking_uri,
    registry_name,
    version,
    candidate,
    primary_metric,
    split_fingerprint,
    recorded,
    version_tags,
    evidence: Evidence = Evidence(),
) -> Decision:
    """Read the champion, decide and move the alias as one step: under the store lock, and for a
    tracking server (no lock) compare-and-set: when the champion changed while deciding, decide again."""
    for _ in range(CAS_ATTEMPTS):
        with store_lock(tracking_uri):
            seen = read_champion(client, registry_name)
            decision = _decision_for(
                client, registry_name, version, candidate, primary_metric, split_fingerprint, recorded, evidence
            )
            now = read_champion(client, registry_name)
            if (seen and seen.version) == (now and now.version):
                record_decision(client, registry_name, version, decision, version_tags)
                return decision
    raise RuntimeError(f"the champion of {registry_name} kept changing while v{version} was registered; retry")


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
    registration_key: str | None = None,
    evidence: Evidence | None = None,
    training_key: str | None = None,
) -> RegistrationResult:
    """Log the run and model, register a version, and set `champion` or `challenger`.

    The champion rule is `decide_alias`: the candidate must beat the popularity baseline, and the
    champion's number on the same test targets (its recorded value on the same split, or the
    `evidence.head_to_head` re-evaluation on this one) by more than `evidence.min_gain`. The
    decision, both numbers and the evidence are stored as version tags; `training_key` (split
    content + settings + code) lets the next run see that it would train the same model again.

    With `registration_key`, a retry is safe: if a version tagged with that key exists, nothing
    new is logged; a fully registered one is returned as it was recorded, and one whose
    registration was interrupted after the version was created is tagged and aliased now.
    """
    if primary_metric not in metrics:
        raise KeyError(f"primary metric {primary_metric!r} not among the evaluated metrics {sorted(metrics)}")
    client = connect(tracking_uri)
    candidate = float(metrics[primary_metric])
    existing = find_version_by_key(client, registry_name, registration_key) if registration_key else None
    if existing is not None and ALIAS_TAG in existing.tags:
        return _recorded_result(client, tracking_uri, registry_name, existing)

    run_tags = {"split_fingerprint": split_fingerprint, "data_manifest_hash": data_manifest_hash, **(tags or {})}
    version_tags = {
        "split_fingerprint": split_fingerprint,
        "data_manifest_hash": data_manifest_hash,
        "primary_metric": primary_metric,
        "primary_metric_value": repr(candidate),
        **(evidence or Evidence()).tags(),
        **({TRAINING_KEY_TAG: training_key} if training_key else {}),
        **(tags or {}),
    }
    key_tags = {REGISTRATION_KEY_TAG: registration_key} if registration_key else {}
    if existing is not None:  # interrupted after the version was created: finish it
        version, run_id, exp_id, recorded = str(existing.version), existing.run_id, None, dict(existing.tags)
    else:
        exp_id = ensure_experiment(client, experiment, artifact_location)
        run_id, version = log_run(
            model_dir,
            experiment_id=exp_id,
            registry_name=registry_name,
            metrics=metrics,
            config=config,
            run_tags={**run_tags, **key_tags},
            extra_artifacts=extra_artifacts,
            run_name=run_name,
            version_tags=key_tags,
        )
        recorded = {}
    decision = _decide_and_record(
        client,
        tracking_uri,
        registry_name,
        version,
        candidate,
        primary_metric,
        split_fingerprint,
        recorded,
        version_tags,
        evidence or Evidence(),
    )
    return _result(client, tracking_uri, registry_name, version, run_id, decision, candidate, exp_id)


# ---------------------------------------------------------------- what the next run needs to know


def find_trained(tracking_uri: str | None, registry_name: str, training_key: str) -> dict | None:
    """The registered version trained with `training_key` (same split content, settings, code):
    {"version", "alias", "decision"} or None. A run that would train it again registers nothing."""
    client = connect(tracking_uri)
    if "'" in training_key or "'" in registry_name:
        raise ValueError(f"training key and model name cannot contain a quote: {training_key!r}")
    found = client.search_model_versions(f"name = '{registry_name}' AND tags.{TRAINING_KEY_TAG} = '{training_key}'")
    done = [v for v in found if ALIAS_TAG in v.tags]  # fully registered
    if not done:
        return None
    mv = min(done, key=lambda v: int(v.version))
    aliases = client.get_registered_model(registry_name).aliases or {}
    return {
        "version": str(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        "decision": mv.tags.get("decision", ""),
        "run_id": mv.run_id,
    }


def champion_snapshot(tracking_uri: str | None, registry_name: str) -> dict | None:
    """The current champion: version, split fingerprint, primary metric and value (None without one)."""
    client = connect(tracking_uri)
    champion = read_champion(client, registry_name)
    return None if champion is None else asdict(champion)


def download_model_dir(tracking_uri: str | None, registry_name: str, version: str, dest: str | Path) -> Path:
    """The model directory a version was logged with (config.json, weights, items), under dest."""
    import mlflow

    connect(tracking_uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registry_name}/{version}", dst_path=str(dest))
    )
    for config in sorted(local.rglob("config.json")):
        if (config.parent / "model.safetensors").exists():
            return config.parent
    raise FileNotFoundError(
        f"version {version} of {registry_name} holds no model directory (config.json + model.safetensors)"
    )


# ---------------------------------------------------------------- moving the alias by hand


def _stamp(who: str, reason: str, **more: str) -> str:
    from datetime import datetime, timezone

    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"by": who, "at": at, "reason": reason, **more})


def promote(tracking_uri: str | None, registry_name: str, version: str, *, reason: str, who: str) -> dict:
    """Make `version` the champion by hand; who and why go into both versions' tags."""
    client = connect(tracking_uri)
    with store_lock(tracking_uri):
        client.get_model_version(registry_name, str(version))  # an unknown version is an error here
        old = read_champion(client, registry_name)
        if old is not None and old.version == str(version):
            return {"registry_name": registry_name, "champion": str(version), "previous": old.version, "changed": False}
        client.set_model_version_tag(registry_name, str(version), PREVIOUS_CHAMPION_TAG, old.version if old else "")
        client.set_model_version_tag(
            registry_name, str(version), "promoted", _stamp(who, reason, replaced=old.version if old else "")
        )
        if old is not None:
            client.set_model_version_tag(
                registry_name, old.version, "demoted", _stamp(who, reason, by_version=str(version))
            )
        client.set_registered_model_alias(registry_name, CHAMPION, str(version))
        _retag_roles(client, registry_name, champion=str(version), demoted=old.version if old else None)
    return {
        "registry_name": registry_name,
        "champion": str(version),
        "previous": old.version if old else None,
        "changed": True,
    }


def rollback(tracking_uri: str | None, registry_name: str, *, reason: str, who: str, to: str | None = None) -> dict:
    """Give the champion alias back to the version the current champion replaced (or `to`)."""
    client = connect(tracking_uri)
    with store_lock(tracking_uri):
        current = read_champion(client, registry_name)
        if current is None:
            raise ValueError(f"{registry_name} has no champion to roll back")
        target = (
            str(to) if to else client.get_model_version(registry_name, current.version).tags.get(PREVIOUS_CHAMPION_TAG)
        )
        if not target:
            raise ValueError(
                f"champion v{current.version} of {registry_name} replaced no earlier champion; name one with --to"
            )
        client.get_model_version(registry_name, target)
        client.set_model_version_tag(
            registry_name, current.version, "rolled_back", _stamp(who, reason, to_version=target)
        )
        client.set_model_version_tag(
            registry_name, target, "restored", _stamp(who, reason, from_version=current.version)
        )
        client.set_registered_model_alias(registry_name, CHAMPION, target)
        _retag_roles(client, registry_name, champion=target, demoted=current.version)
    return {"registry_name": registry_name, "champion": target, "previous": current.version, "changed": True}


def _retag_roles(client, registry_name: str, *, champion: str, demoted: str | None) -> None:
    # The `alias` tag, shown beside the version in the MLflow UI, follows the alias (which stays the
    # truth): after a rollback the demoted version must not read "champion". The registration-time
    # decision stays in `decision`; who moved it and why in promoted/demoted/rolled_back/restored.
    client.set_model_version_tag(registry_name, champion, ALIAS_TAG, CHAMPION)
    if demoted is not None:
        client.set_model_version_tag(registry_name, demoted, ALIAS_TAG, CHALLENGER)


def champion_profile(tracking_uri: str | None, registry_name: str, version: str) -> dict | None:
    """The data profile logged with a version's run (None for versions registered before profiles)."""
    import mlflow

    client = connect(tracking_uri)
    run_id = client.get_model_version(registry_name, str(version)).run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    if PROFILE_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="gru4rec-profile-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROFILE_ARTIFACT, dst_path=tmp)
        return json.loads(Path(path).read_text(encoding="utf-8"))
