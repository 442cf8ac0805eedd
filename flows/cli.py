"""The `gru4rec-pipeline` command line.

Every subcommand builds one typed config, runs the matching Prefect flow in Prefect's ephemeral
mode (no server needed) and prints a summary. Errors meant for the user are printed as one clear
message (no traceback) with exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.cli_options import deep_update, options_for, with_options
from flows.config import EvaluationSettings, PipelineConfig, PrepareConfig, TrainingSettings, TuningConfig
from flows.ops_cli import register as register_operations
from gru4rec.config import Gru4RecConfig
from gru4rec.device import DeviceName
from gru4rec.errors import PipelineError, validation_errors_text
from gru4rec.presets import PresetName

COLUMN_ROLES = ("session", "item", "time", "rating")  # --col-session etc. (ingest.columns.*)

app = typer.Typer(
    name="gru4rec-pipeline",
    help="Session-based next-item recommendation with GRU4Rec, orchestrated by Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich's boxed help cuts long option names ("--max-duplicate-fra…") at 80
    # columns and in pipes; click's never does.
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Session-based next-item recommendation with GRU4Rec, orchestrated by Prefect."""


def _fail(message: str) -> None:
    # escape: a message holding "[...]" (NAME[@alias], a list) must not be read as rich markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed run with its traceback; for our own clear errors the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


EPHEMERAL_STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _prefect_env() -> None:
    # Quiet, serverless defaults; the user's own settings win.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    home = os.environ.get("PREFECT_HOME")
    if home:  # Prefect creates its home but not missing parents; its server then fails to start
        Path(home).expanduser().mkdir(parents=True, exist_ok=True)
    if not os.environ.get("PREFECT_API_URL"):  # ephemeral mode: a temporary server in a subprocess
        # Prefect waits 20 s for it; on a busy machine that start takes longer (issue: lost races).
        os.environ.setdefault(EPHEMERAL_STARTUP_TIMEOUT, "180")
        # Automations need a real server; in the temporary one the triggers service only races the
        # shutdown ("Reactive triggers not started").
        os.environ.setdefault("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForUserErrors())


# Runs beside the CLI from before the temporary server starts: it notes the CLI's uvicorn children
# (the server) and, once the CLI's process is gone — even after kill -9, which skips Prefect's own
# atexit shutdown — stops them, so no orphaned server is left holding memory.
SERVER_WATCHDOG = """
import os, signal, sys, time
from pathlib import Path
cli = int(sys.argv[1])
def is_server(pid):  # "python -m uvicorn ...": uvicorn as an argument of its own (our cmdline only quotes it)
    try:
        return pid != os.getpid() and b"\\0uvicorn\\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
def servers_of(pid):
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and is_server(int(stat.parent.name)):
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found
servers = set()
scanned = 0.0
while alive(cli):
    if not servers or time.monotonic() - scanned > 5:  # scanning /proc costs; the CLI's liveness is cheap
        servers |= servers_of(cli)
        scanned = time.monotonic()
    time.sleep(0.2)
for server in servers:
    try:
        if is_server(server):  # still a server, not a reused pid
            os.kill(server, signal.SIGTERM)
    except OSError:
        pass
for _ in range(50):
    if not any(alive(s) for s in servers):
        break
    time.sleep(0.1)
for server in servers:
    try:
        if alive(server) and is_server(server):
            os.kill(server, signal.SIGKILL)
    except OSError:
        pass
"""


def _start_temporary_server() -> None:
    """Start Prefect's temporary server now (the one its flows would start), watched from the start."""
    import subprocess

    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.running:
        return
    subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", SERVER_WATCHDOG, str(os.getpid())],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server.start(timeout=int(os.environ[EPHEMERAL_STARTUP_TIMEOUT]))


def _run_flow(flow_fn, config):
    """Run a flow; our errors and a temporary server that did not start become one clear line."""
    try:
        if not os.environ.get("PREFECT_API_URL") and sys.platform.startswith("linux"):
            _start_temporary_server()
        return flow_fn(config)
    except PipelineError as e:
        _fail(str(e))
    except RuntimeError as e:
        if "ephemeral Prefect API server" not in str(e):
            raise
        if "exited with code" in str(e):
            home = os.environ.get("PREFECT_HOME", "~/.prefect")
            _fail(
                f"the temporary Prefect server exited while starting; is PREFECT_HOME={home} writable? ({str(e)[:300]})"
            )
        _fail(
            f"the temporary Prefect server did not start within {os.environ.get(EPHEMERAL_STARTUP_TIMEOUT)} s "
            f"(a busy machine?): raise {EPHEMERAL_STARTUP_TIMEOUT}, or start `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )


def print_split_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in rows[0].keys() if rows else []:
        table.add_column(str(col), justify="right" if col in ("events", "sessions", "items") else "left")
    for r in rows:
        table.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()])
    console.print(table)


# Options derived from the config models (flows.cli_options); only the flags below are renamed.
PREPARE_OPTIONS = options_for(
    PrepareConfig,
    rename={"split.test_days": "days", "out_dir": "out"} | {f"ingest.columns.{c}": f"col-{c}" for c in COLUMN_ROLES},
)
HYPERPARAMETER_OPTIONS = options_for(Gru4RecConfig, default_note="the preset's value")
PIPELINE_OPTIONS = options_for(
    PipelineConfig,
    rename={"split.test_days": "days", "registry.name": "registry-name", "cache_data": "cache"}
    | {f"ingest.columns.{c}": f"col-{c}" for c in COLUMN_ROLES},
)
EVALUATION_OPTIONS = options_for(EvaluationSettings, rename={"ks": "k"})
TUNING_OPTIONS = options_for(TuningConfig, rename={"split_dir": "split", "out_dir": "out"})


def _read_config_file(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(f"cannot read --config {path}: {e}")
    if not isinstance(data, dict):
        _fail(f"--config {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_sources(ingest) -> None:
    """Sources named on this machine must exist (a file, or a directory/glob holding data files): said
    now, not after the server starts. (The flows check again: a deployment's run may read files that only
    its worker sees.)"""
    from gru4rec.data.sources import expand_source

    for setting in ("source", "test_source", "valid_source"):
        value = getattr(ingest, setting)
        if value is None:
            continue
        try:
            expand_source(value, setting)
        except PipelineError as e:
            _fail(str(e))


def _validated(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        _fail(f"invalid settings: {validation_errors_text(e)}")


@app.command()
@with_options(PREPARE_OPTIONS)
def prepare(
    config: Annotated[
        Path | None, typer.Option(help="JSON file with a PrepareConfig; options given here override it.")
    ] = None,
    *,
    given: dict,
) -> None:
    """Ingest → validate → sessionize and split into Parquet (the `prepare_data` flow)."""
    cfg = _validated(PrepareConfig, deep_update(_read_config_file(config), given))
    _check_sources(cfg.ingest)
    _prefect_env()
    from flows.prepare import prepare_data

    result = _run_flow(prepare_data, cfg)
    print_split_table(result["table"], title=f"Split written to {result['split_dir']}")
    removed = result["stats"].get("removed") or result["stats"].get("filters")
    if removed:
        console.print(f"removed by filters: {json.dumps(removed)}", highlight=False, soft_wrap=True)


def _overrides(pairs: list[str] | None, hyperparameters: dict) -> dict[str, Any]:
    """--set KEY=VALUE pairs and the model/train options given, as dotted preset overrides."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            _fail(f"--set expects key=value (e.g. train.lr=0.1 or model.layers=[200]), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    for section, values in hyperparameters.items():
        for name, value in values.items():
            key = f"{section}.{name}"
            if key in out and str(out[key]) != str(value):
                _fail(f"{key} is given twice, as --set {key}={out[key]} and as --{name.replace('_', '-')} {value}")
            out[key] = value
    return out


def _split_hyperparameters(given: dict) -> tuple[dict, dict]:
    """(model.*/train.* options, the rest) of a command's given options."""
    hyper = {k: given.pop(k) for k in ("model", "train") if k in given}
    return hyper, given


def print_metrics_table(report: dict, title: str) -> None:
    from gru4rec.jobs import metrics_table

    rows = metrics_table(report)
    # One row per metric, one column per model: fits an 80-column terminal or log file (one
    # column per metric did not, and rich then cut every number to "0.…").
    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    for r in rows:
        table.add_column(r["model"], justify="right", no_wrap=True)
    for metric in [k for k in rows[0] if k != "model"] if rows else []:
        table.add_row(metric, *["-" if r[metric] is None else f"{r[metric]:.4f}" for r in rows])
    console.print(table)


def _seen_note(excluded: bool) -> str:
    return "seen items excluded" if excluded else "seen items kept"


def _seen_summary(seen: dict) -> str:
    """One line: the repeat share measured on the training data and what the setting decided."""
    return (
        f"repeated (session, item) pairs in the training data ({seen['measured_on']}): {seen['repeat_share']:.2%} "
        f"({seen['repeated_pairs']:,} of {seen['pairs']:,}); exclude_seen={seen['setting']} → seen items "
        f"{'excluded' if seen['exclude_seen'] else 'kept'} (auto excludes under {seen['threshold']:.0%})"
    )


def print_history_table(summary: dict) -> None:
    table = Table(title=f"Training history ({summary['device']}; metrics on the valid split) → {summary['model_dir']}")
    hist = summary["history"]
    cols = ["epoch", "loss", "events_per_s"] + [k for k in hist[0] if k.startswith("valid_") and "@20" in k]
    for c in cols:  # short headers: the table must fit 80 columns (logs, pipes) without cutting them
        table.add_column("events/s" if c == "events_per_s" else c.removeprefix("valid_"), justify="right")
    for h in hist:
        table.add_row(
            *[f"{h[c]:,.0f}" if c == "events_per_s" else (str(h[c]) if c == "epoch" else f"{h[c]:.4f}") for c in cols]
        )
    console.print(table)


PresetOption = Annotated[PresetName | None, typer.Option(help="Starting configuration ; default gru4rec-xe.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a preset field by dotted key: model.KEY=VALUE or train.KEY=VALUE."),
]


@app.command()
@with_options(HYPERPARAMETER_OPTIONS)
def train(
    split: Annotated[Path, typer.Option(help="Split directory written by `prepare`.")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    preset: PresetOption = None,
    preset_file: Annotated[
        Path | None, typer.Option(help="Start from a preset file (e.g. `tune`'s best_preset.json) instead of --preset.")
    ] = None,
    set_: SetOption = None,
    full: Annotated[bool, typer.Option("--full", help="Train on train+valid (no validation).")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Resume an interrupted run of the same job (same split, settings and code) from its checkpoint."
        ),
    ] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty --out that is not a model directory.")
    ] = False,
    *,
    given: dict,
) -> None:
    """Train GRU4Rec on an existing split directory; writes weights, config, items and history.json."""
    from gru4rec.jobs import train_on_split
    from gru4rec.presets import starting_config

    hyper, _ = _split_hyperparameters(given)
    if preset and preset_file:
        _fail("give --preset or --preset-file, not both")
    preset = preset or TrainingSettings.model_fields["preset"].default
    try:
        cfg = starting_config(preset, preset_file, _overrides(set_, hyper))
        preset = str(preset_file) if preset_file else preset
        summary = train_on_split(split, cfg, out, full=full, resume=resume, preset=preset, overwrite=overwrite)
    except PipelineError as e:
        _fail(str(e))
    for note in summary.get("notes", []):
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    print_history_table(summary)


@app.command()
@with_options(EVALUATION_OPTIONS)
def evaluate(
    split: Annotated[Path, typer.Option(help="Split directory the model was trained on.")],
    model: Annotated[Path, typer.Option(help="Model directory written by `train`.")],
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    device: Annotated[DeviceName, typer.Option(help="Evaluation device.")] = "auto",
    *,
    given: dict,
) -> None:
    """Evaluate a model on the split's test set (next item over the full catalogue)."""
    from gru4rec.jobs import evaluate_on_split

    settings = _validated(EvaluationSettings, given)
    try:
        report = evaluate_on_split(
            split,
            model,
            ks=tuple(settings.ks),
            ties=settings.ties,
            out=out,
            device=device,
            baselines=tuple(settings.baselines),
            exclude_seen=settings.exclude_seen,
            compare_seen=True,
        )
    except PipelineError as e:
        _fail(str(e))
    title = f"Test set: {report['n_targets']:,} targets, ties={settings.ties}"
    print_metrics_table(report, title=f"{title}, {_seen_note(report['seen_items']['exclude_seen'])}")
    other = report["metrics_other_seen"]
    print_metrics_table(
        {"metrics": other["metrics"], "ks": report["ks"]}, title=f"The same, {_seen_note(other['exclude_seen'])}"
    )
    console.print(_seen_summary(report["seen_items"]), highlight=False, soft_wrap=True)
    if out:
        console.print(f"metrics written to {out}")


@app.command()
@with_options(PIPELINE_OPTIONS + HYPERPARAMETER_OPTIONS)
def run(
    set_: SetOption = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file with a PipelineConfig; options given here override it.")
    ] = None,
    *,
    given: dict,
) -> None:
    """The whole pipeline: ingest → validate → split → train → evaluate → register (MLflow)."""
    hyper, given = _split_hyperparameters(given)
    data = deep_update(_read_config_file(config), given)
    overrides = _overrides(set_, hyper)
    if overrides:
        training = data.setdefault("training", {})
        training["overrides"] = {**training.get("overrides", {}), **overrides}
    cfg = _validated(PipelineConfig, data)
    _check_sources(cfg.ingest)
    _prefect_env()
    from flows.training import training_pipeline

    result = _run_flow(training_pipeline, cfg)
    print_run_summary(result, cfg)


def print_run_summary(result: dict, cfg: PipelineConfig) -> None:
    reg = result["registration"]
    if not reg.get("registered", True):  # nothing new to train
        console.print(f"{reg['registry_name']}: {reg['decision']}", highlight=False)
        console.print(f"MLflow: {result['tracking_uri']}", highlight=False)
        return
    report = {
        "metrics": result["metrics"],
        "ks": cfg.evaluation.ks,
        "n_targets": result["metrics"]["gru4rec"]["n_targets"],
    }
    title = f"Test set ({report['n_targets']:,} targets, ties={cfg.evaluation.ties})"
    seen = result.get("seen_items")
    if seen:
        title += f", {_seen_note(seen['exclude_seen'])}"
    print_metrics_table(report, title=title)
    other = result.get("metrics_other_seen")
    if other:
        print_metrics_table(
            {"metrics": other["metrics"], "ks": cfg.evaluation.ks},
            title=f"The same, {_seen_note(other['exclude_seen'])} (for comparison; the champion gate uses the above)",
        )
    if seen:
        console.print(_seen_summary(seen), highlight=False, soft_wrap=True)
    h2h = reg.get("head_to_head")
    if h2h:
        console.print(
            f"champion v{h2h['champion_version']} on this test split: {cfg.registry.primary_metric} "
            f"{h2h['value']:.4f} ({h2h['unknown_targets']:,} of {h2h['n_targets']:,} targets unknown to it)",
            highlight=False,
        )
    for warning in reg.get("warnings", []):
        console.print(f"[bold yellow]{warning}[/bold yellow]", highlight=False)
    console.print(
        f"registered [bold]{reg['registry_name']}[/bold] version [bold]{reg['version']}[/bold] as "
        f"[bold]{reg['alias']}[/bold]: {reg['decision']}",
        highlight=False,
    )
    tm = result["timings"]
    console.print(
        f"device: {result['device']}; wall {tm['total']:.1f} s = compute {tm['compute']:.1f} s "
        f"(training + evaluation) + orchestration/data {tm['overhead']:.1f} s; run directory {result['run_dir']}",
        highlight=False,
    )
    console.print(f"MLflow: {result['tracking_uri']}", highlight=False)


def _shorten(values: list, limit: int = 10) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f" … and {len(values) - limit:,} more" if len(values) > limit else "")


@app.command()
def recommend(
    items: Annotated[list[str], typer.Argument(help="The session so far: item ids, oldest first.")],
    model: Annotated[str, typer.Option(help="NAME[@alias] or NAME/version in the registry, or a model directory.")] = (
        "gru4rec@champion"
    ),
    k: Annotated[int, typer.Option(min=1, help="Number of recommendations.")] = 20,
    exclude_seen: Annotated[
        bool | None,
        typer.Option(
            "--exclude-seen/--no-exclude-seen",
            help="Leave out / keep items already in the session; default: the model's own setting (decided "
            "when it was trained, see evaluation.exclude_seen; models from before keep them).",
        ),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: embedded store).")] = None,
    workdir: Annotated[str | None, typer.Option(help="Workdir of the embedded MLflow store ; default runs.")] = None,
) -> None:
    """Next-item recommendations for one session."""
    workdir = workdir or PipelineConfig.model_fields["workdir"].default
    try:
        if Path(model).is_dir():
            rec = _recommend_from_directory(model, items, k, exclude_seen)
        else:
            rec = _recommend_from_registry(model, items, k, exclude_seen, tracking_uri, workdir)
    except PipelineError as e:
        _fail(str(e))
    if rec["unknown_items"]:
        console.print(f"unknown items skipped: {_shorten(rec['unknown_items'])}", highlight=False)
    if rec["fallback"]:
        console.print("[yellow]no known item in the session: most popular items returned (fallback)[/yellow]")
    table = Table(title=f"Top {k} next items ({model})")
    table.add_column("rank", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for i, (item, score) in enumerate(zip(rec["items"], rec["scores"]), 1):
        table.add_row(str(i), str(item), f"{float(score):.4f}")
    console.print(table)


def _recommend_from_directory(model: str, items: list[str], k: int, exclude_seen: bool | None) -> dict:
    from gru4rec.persist import load_model
    from gru4rec.recommender import Recommender

    rec = Recommender(load_model(model)).recommend([items], k=k, exclude_seen=exclude_seen)[0]
    return {"items": rec.items, "scores": rec.scores, "unknown_items": rec.unknown_items, "fallback": rec.fallback}


REGISTRY_REFERENCE = re.compile(r"^[\w.-]+(@[\w.-]+|/\d+)?$")  # NAME, NAME@alias, NAME/version


def _existing_store(tracking_uri: str | None, workdir: str) -> str:
    """The tracking URI given, or the embedded store under the workdir if it exists."""
    from gru4rec.errors import ModelFileError

    if tracking_uri is not None:
        return tracking_uri
    store = Path(workdir) / "mlflow" / "mlflow.db"
    if not store.is_file():  # never create an empty store just to look something up
        raise ModelFileError(
            f"no MLflow store at {store}: run `gru4rec-pipeline run` first, or pass --workdir/--tracking-uri"
        )
    return f"sqlite:///{store.resolve()}"


def _registry_uri(model: str, tracking_uri: str | None, workdir: str) -> tuple[str, str]:
    """(tracking URI, models:/ URI) for a registry reference; a clear error for anything else."""
    from gru4rec.errors import ModelFileError

    if not REGISTRY_REFERENCE.match(model):
        raise ModelFileError(f"model directory {model} not found (and it is not a NAME[@alias] or NAME/version)")
    tracking_uri = _existing_store(tracking_uri, workdir)
    name, _, alias = model.partition("@")
    return tracking_uri, f"models:/{model}" if "/" in model else f"models:/{name}@{alias or 'champion'}"


def _recommend_from_registry(
    model: str, items: list[str], k: int, exclude_seen: bool | None, tracking_uri, workdir
) -> dict:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from gru4rec.errors import ModelFileError

    uri, model_uri = _registry_uri(model, tracking_uri, workdir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as e:
        raise ModelFileError(f"cannot load {model_uri} from {uri}: {e.message.splitlines()[0]}") from None
    params = {"k": k} | ({} if exclude_seen is None else {"exclude_seen": exclude_seen})  # absent: the model's
    out = pyfunc.predict(pd.DataFrame({"items": [items]}), params=params)
    row = out.iloc[0]
    return {
        "items": list(row["items"]),
        "scores": list(row["scores"]),
        "unknown_items": list(row["unknown_items"]),
        "fallback": bool(row["fallback"]),
    }


ModelName = Annotated[str, typer.Option("--model", help="Registered model name.")]
Reason = Annotated[str, typer.Option(help="Why (recorded in the versions' tags with your user name).")]
TrackingUri = Annotated[str | None, typer.Option(help="MLflow tracking URI (default: embedded store).")]
Workdir = Annotated[str | None, typer.Option(help="Workdir of the embedded MLflow store; default runs.")]


def _move_alias(action, tracking_uri: str | None, workdir: str | None, *args, **kwargs) -> None:
    """Run promote/rollback on the store given (or the workdir's embedded one); one-line errors."""
    import getpass

    from mlflow.exceptions import MlflowException

    try:
        uri = _existing_store(tracking_uri, workdir or PipelineConfig.model_fields["workdir"].default)
        result = action(uri, *args, who=getpass.getuser(), **kwargs)
    except (MlflowException, ValueError, PipelineError) as e:
        _fail(str(getattr(e, "message", e)).splitlines()[0])
    before = f" (was v{result['previous']})" if result["previous"] else ""
    state = "is now" if result["changed"] else "already is"
    console.print(f"{result['registry_name']}: v{result['champion']} {state} champion{before}", highlight=False)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    reason: Reason,
    model: ModelName = "gru4rec",
    tracking_uri: TrackingUri = None,
    workdir: Workdir = None,
) -> None:
    """Make a registered version the champion by hand (who and why are recorded)."""
    from tasks.registry import promote as promote_version

    _move_alias(promote_version, tracking_uri, workdir, model, version, reason=reason)


@app.command()
def rollback(
    reason: Reason,
    model: ModelName = "gru4rec",
    to: Annotated[str | None, typer.Option(help="Version to restore (default: the one the champion replaced).")] = None,
    tracking_uri: TrackingUri = None,
    workdir: Workdir = None,
) -> None:
    """Give the champion alias back to the previous champion (who and why are recorded)."""
    from tasks.registry import rollback as rollback_champion

    _move_alias(rollback_champion, tracking_uri, workdir, model, reason=reason, to=to)


@app.command()
@with_options(TUNING_OPTIONS)
def tune(
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Keep a setting fixed (not searched), by dotted key: model.KEY=VALUE or train.KEY=VALUE."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file with a TuningConfig; options given here override it.")
    ] = None,
    *,
    given: dict,
) -> None:
    """Hyperparameter search (Optuna, trials in parallel on Dask): writes the best configuration as a preset file."""
    data = deep_update(_read_config_file(config), given)
    fixed = _overrides(set_, {})
    if fixed:
        data["overrides"] = {**data.get("overrides", {}), **fixed}
    cfg = _validated(TuningConfig, data)
    _prefect_env()
    from flows.tuning import hyperparameter_search

    result = _run_flow(hyperparameter_search, cfg)
    print_tuning_summary(result)


def print_tuning_summary(result: dict) -> None:
    states = ", ".join(f"{n} {s.lower()}" for s, n in result["states"].items())
    console.print(
        f"study {result['study_name']} ({result['storage']}): {result['n_trials']} trials ({states}); "
        f"{result['trials_this_run']} run now in {result['seconds']:.0f} s",
        highlight=False,
        soft_wrap=True,
    )
    best = result["best"]
    if best is None:
        console.print("[yellow]no trial finished: no preset written[/yellow]")
        return
    table = Table(title=f"Best: trial {best['trial']}, validation {result['metric']} {best['value']:.4f}")
    table.add_column("setting")
    table.add_column("value", justify="right")
    for key, value in best["overrides"].items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("train.epochs", str(best["best_epoch"]))
    console.print(table)
    console.print(f"preset file: {result['best_preset']}  (train --preset-file / run --preset-file)", highlight=False)


register_operations(app)  # deploy, schedule pause|resume|status, notify test (flows/ops_cli.py)


def main() -> None:
    try:
        app()
    except PipelineError as e:  # an error raised outside a command's own handling
        err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
