"""The `gru4rec-pipeline` command line.

Every subcommand builds one typed config, runs the matching Prefect flow in Prefect's ephemeral
mode (no server needed) and prints a summary. Errors meant for the user are printed as one clear
message (no traceback) with exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from gru4rec.errors import PipelineError

app = typer.Typer(
    name="gru4rec-pipeline",
    help="Session-based next-item recommendation with GRU4Rec, orchestrated by Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class Format(str, Enum):
    ml_1m = "ml-1m"
    ml_100k = "ml-100k"
    ml_latest = "ml-latest"
    yoochoose = "yoochoose"
    gru4rec_tsv = "gru4rec-tsv"
    diginetica = "diginetica"
    csv = "csv"
    parquet = "parquet"


class Session(str, Enum):
    user = "user"
    gap = "gap"
    source = "source"


class SplitMode(str, Enum):
    session_end = "session-end"
    global_cut = "global-cut"
    given = "given"


@app.callback()
def _root() -> None:
    """Session-based next-item recommendation with GRU4Rec, orchestrated by Prefect."""


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed run with its traceback; for our own clear errors the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def _prefect_env() -> None:
    # Quiet, serverless defaults; the user's own settings win.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForUserErrors())


def print_split_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in rows[0].keys() if rows else []:
        table.add_column(str(col), justify="right" if col in ("events", "sessions", "items") else "left")
    for r in rows:
        table.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()])
    console.print(table)


@app.command()
def prepare(
    source: Annotated[
        str | None,
        typer.Option(
            help="Interaction log (file, .gz or .zip). Default: MovieLens-1M from GroupLens, or $GRU4REC_ML1M_PATH.",
        ),
    ] = None,
    format: Annotated[Format | None, typer.Option("--format", help="Source format; default: detect.")] = None,
    test_source: Annotated[str | None, typer.Option(help="Pre-split test file (implies --split given).")] = None,
    valid_source: Annotated[str | None, typer.Option(help="Pre-split validation file (with --split given).")] = None,
    out: Annotated[Path, typer.Option(help="Split directory to write.")] = Path("runs/prepare"),
    session: Annotated[Session | None, typer.Option(help="Session definition (default by format).")] = None,
    gap_minutes: Annotated[float, typer.Option(help="Gap that starts a new session (--session gap).")] = 30.0,
    remove_repeats: Annotated[bool, typer.Option(help="Drop consecutive repeats of an item.")] = False,
    min_session_length: Annotated[int, typer.Option(help="Drop shorter sessions.")] = 2,
    min_item_support: Annotated[int, typer.Option(help="Drop items with fewer events.")] = 5,
    split: Annotated[SplitMode | None, typer.Option(help="Split mode (default by format).")] = None,
    days: Annotated[float | None, typer.Option(help="Test window N in days (MovieLens 100, clicks 1).")] = None,
    valid_days: Annotated[float | None, typer.Option(help="Validation window in days (default: --days).")] = None,
    min_rows: Annotated[int, typer.Option(help="Validation: minimum number of events.")] = 100,
    drop_duplicates: Annotated[bool, typer.Option(help="Drop duplicate (session, item, time) rows.")] = False,
    col_session: Annotated[str | None, typer.Option(help="csv/parquet: session (or user) column.")] = None,
    col_item: Annotated[str | None, typer.Option(help="csv/parquet: item column.")] = None,
    col_time: Annotated[str | None, typer.Option(help="csv/parquet: time column.")] = None,
    col_rating: Annotated[str | None, typer.Option(help="csv/parquet: optional rating column.")] = None,
    time_unit: Annotated[str, typer.Option(help="csv/parquet: s, ms, us, ns, iso or format.")] = "s",
    time_format: Annotated[str | None, typer.Option(help="strftime format for --time-unit format.")] = None,
    separator: Annotated[str, typer.Option(help="csv: field separator.")] = ",",
    data_dir: Annotated[str | None, typer.Option(help="Download cache (default $GRU4REC_DATA_DIR).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file with a full PrepareConfig; options given here override it.")
    ] = None,
) -> None:
    """Ingest → validate → sessionize and split into Parquet (the `prepare_data` flow)."""
    from flows.config import PrepareConfig
    from gru4rec.data.config import ColumnMapping

    try:
        base = json.loads(config.read_text(encoding="utf-8")) if config else {}
    except (OSError, json.JSONDecodeError) as e:
        _fail(f"cannot read --config {config}: {e}")
    try:
        columns = None
        if col_session or col_item or col_time:
            columns = ColumnMapping(
                session=col_session or "",
                item=col_item or "",
                time=col_time or "",
                rating=col_rating,
                time_unit=time_unit,
                time_format=time_format,
                separator=separator,
            )
        cfg = PrepareConfig.model_validate(base)
        ingest = cfg.ingest.model_copy(
            update={
                k: v
                for k, v in dict(
                    source=source,
                    format=format.value if format else None,
                    test_source=test_source,
                    valid_source=valid_source,
                    columns=columns,
                    data_dir=data_dir,
                ).items()
                if v is not None
            }
        )
        split_cfg = cfg.split.model_copy(
            update={
                k: v
                for k, v in dict(
                    session=session.value if session else None,
                    split=split.value if split else None,
                    test_days=days,
                    valid_days=valid_days,
                ).items()
                if v is not None
            }
            | dict(
                gap_minutes=gap_minutes,
                remove_repeats=remove_repeats,
                min_session_length=min_session_length,
                min_item_support=min_item_support,
            )
        )
        validation = cfg.validation.model_copy(update=dict(min_rows=min_rows, drop_duplicates=drop_duplicates))
        cfg = PrepareConfig.model_validate(
            dict(
                ingest=ingest.model_dump(),
                validation=validation.model_dump(),
                split=split_cfg.model_dump(),
                out_dir=str(out),
            )
        )
    except ValidationError as e:
        _fail(f"invalid settings: {_pydantic_message(e)}")

    _prefect_env()
    from flows.prepare import prepare_data

    try:
        result = prepare_data(cfg)
    except PipelineError as e:
        _fail(str(e))
    print_split_table(result["table"], title=f"Split written to {result['split_dir']}")
    removed = result["stats"].get("removed") or result["stats"].get("filters")
    if removed:
        console.print(f"removed by filters: {json.dumps(removed)}", highlight=False, soft_wrap=True)


def _parse_sets(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            _fail(f"--set expects key=value (e.g. train.lr=0.1 or model.layers=[200]), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


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


@app.command()
def train(
    split: Annotated[Path, typer.Option(help="Split directory written by `prepare`.")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    preset: Annotated[str, typer.Option(help="tutorial, gru4rec-xe or gru4rec-bprmax.")] = "gru4rec-xe",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: model.KEY=VALUE or train.KEY=VALUE.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (CPU runs repeat bit for bit).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Train on train+valid (no validation).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint of an interrupted run.")] = True,
) -> None:
    """Train GRU4Rec on an existing split directory; writes weights, config, items and history.json."""
    from gru4rec.jobs import build_config, train_step

    try:
        cfg = build_config(
            preset, _parse_sets(set_), epochs=epochs, seed=seed, device=device, threads=threads, progress=progress
        )
        summary = train_step(split, cfg, out, full=full, resume=resume, preset=preset)
    except PipelineError as e:
        _fail(str(e))
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


@app.command()
def evaluate(
    split: Annotated[Path, typer.Option(help="Split directory the model was trained on.")],
    model: Annotated[Path, typer.Option(help="Model directory written by `train`.")],
    k: Annotated[str, typer.Option(help="Cut-offs, comma-separated.")] = "1,5,10,20",
    ties: Annotated[str, typer.Option(help="conservative, standard or median.")] = "conservative",
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    baselines: Annotated[bool, typer.Option(help="Also evaluate popularity and item-kNN baselines.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Evaluate a model on the split's test set (next item over the full catalogue)."""
    from gru4rec.jobs import evaluate_step

    try:
        ks = tuple(sorted({int(x) for x in k.split(",") if x.strip()}))
    except ValueError:
        _fail(f"--k expects comma-separated integers, got {k!r}")
    if ties not in ("conservative", "standard", "median"):
        _fail(f"--ties must be conservative, standard or median, got {ties!r}")
    try:
        report = evaluate_step(
            split,
            model,
            ks=ks,
            ties=ties,
            out=out,
            device=device,
            baselines=("popularity", "item-knn") if baselines else (),
        )
    except PipelineError as e:
        _fail(str(e))
    print_metrics_table(report, title=f"Test set: {report['n_targets']:,} targets, ties={ties}")
    if out:
        console.print(f"metrics written to {out}")


@app.command()
def run(
    source: Annotated[
        str | None, typer.Option(help="Interaction log; default: MovieLens-1M (download or $GRU4REC_ML1M_PATH).")
    ] = None,
    format: Annotated[Format | None, typer.Option("--format", help="Source format; default: detect.")] = None,
    test_source: Annotated[str | None, typer.Option(help="Pre-split test file (split 'given').")] = None,
    valid_source: Annotated[str | None, typer.Option(help="Pre-split validation file.")] = None,
    session: Annotated[Session | None, typer.Option(help="Session definition (default by format).")] = None,
    split: Annotated[SplitMode | None, typer.Option(help="Split mode (default by format).")] = None,
    days: Annotated[float | None, typer.Option(help="Test window N in days.")] = None,
    gap_minutes: Annotated[float | None, typer.Option(help="Gap that starts a new session.")] = None,
    min_item_support: Annotated[int | None, typer.Option(help="Drop items with fewer events.")] = None,
    preset: Annotated[str | None, typer.Option(help="tutorial, gru4rec-xe or gru4rec-bprmax.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Model/training override KEY=VALUE.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch.")] = None,
    full: Annotated[bool | None, typer.Option(help="Train the registered model on train+valid.")] = None,
    registry_name: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: embedded SQLite).")] = None,
    primary_metric: Annotated[str | None, typer.Option(help="Metric deciding the champion.")] = None,
    workdir: Annotated[str | None, typer.Option(help="Run directories and the embedded MLflow store.")] = None,
    cache: Annotated[bool | None, typer.Option(help="Reuse ingest/validate/split results.")] = None,
    cache_training: Annotated[bool | None, typer.Option(help="Also reuse a trained model.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file with a full PipelineConfig; options override it.")
    ] = None,
) -> None:
    """The whole pipeline: ingest → validate → split → train → evaluate → register (MLflow)."""
    from flows.config import PipelineConfig

    try:
        data = json.loads(config.read_text(encoding="utf-8")) if config else {}
    except (OSError, json.JSONDecodeError) as e:
        _fail(f"cannot read --config {config}: {e}")

    def put(section: str, key: str, value) -> None:
        if value is not None:
            data.setdefault(section, {})[key] = value.value if isinstance(value, Enum) else value

    put("ingest", "source", source)
    put("ingest", "format", format)
    put("ingest", "test_source", test_source)
    put("ingest", "valid_source", valid_source)
    put("split", "session", session)
    put("split", "split", split)
    put("split", "test_days", days)
    put("split", "gap_minutes", gap_minutes)
    put("split", "min_item_support", min_item_support)
    put("model", "preset", preset)
    put("model", "epochs", epochs)
    put("model", "seed", seed)
    put("model", "device", device)
    put("model", "threads", threads)
    put("model", "full", full)
    if set_:
        data.setdefault("model", {}).setdefault("overrides", {}).update(_parse_sets(set_))
    put("registry", "name", registry_name)
    put("registry", "tracking_uri", tracking_uri)
    put("registry", "primary_metric", primary_metric)
    if workdir is not None:
        data["workdir"] = workdir
    if cache is not None:
        data["cache_data"] = cache
    if cache_training is not None:
        data["cache_training"] = cache_training
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as e:
        _fail(f"invalid settings: {_pydantic_message(e)}")

    _prefect_env()
    from flows.training import training_pipeline

    try:
        result = training_pipeline(cfg)
    except PipelineError as e:
        _fail(str(e))
    report = {
        "metrics": result["metrics"],
        "ks": cfg.evaluation.ks,
        "n_targets": result["metrics"]["gru4rec"]["n_targets"],
    }
    print_metrics_table(report, title=f"Test set ({report['n_targets']:,} targets, ties={cfg.evaluation.ties})")
    reg = result["registration"]
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


@app.command()
def recommend(
    items: Annotated[list[str], typer.Argument(help="The session so far: item ids, oldest first.")],
    model: Annotated[str, typer.Option(help="NAME[@alias] or NAME/version in the registry, or a model directory.")] = (
        "gru4rec@champion"
    ),
    k: Annotated[int, typer.Option(help="Number of recommendations.")] = 20,
    exclude_seen: Annotated[bool, typer.Option(help="Do not recommend items already in the session.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: embedded store).")] = None,
    workdir: Annotated[str, typer.Option(help="Workdir of the embedded MLflow store.")] = "runs",
) -> None:
    """Next-item recommendations for one session."""
    from gru4rec.errors import ModelFileError

    try:
        if Path(model).is_dir():
            from gru4rec.persist import load_model
            from gru4rec.recommender import Recommender

            rec = Recommender(load_model(model)).recommend([items], k=k, exclude_seen=exclude_seen)[0]
            rec = {
                "items": rec.items,
                "scores": rec.scores,
                "unknown_items": rec.unknown_items,
                "fallback": rec.fallback,
            }
        else:
            rec = _recommend_from_registry(model, items, k, exclude_seen, tracking_uri, workdir)
    except PipelineError as e:
        _fail(str(e))
    except ModelFileError as e:  # pragma: no cover - ModelFileError is a PipelineError
        _fail(str(e))
    if rec["unknown_items"]:
        console.print(f"unknown items skipped: {', '.join(map(str, rec['unknown_items']))}", highlight=False)
    if rec["fallback"]:
        console.print("[yellow]no known item in the session: most popular items returned (fallback)[/yellow]")
    table = Table(title=f"Top {k} next items ({model})")
    table.add_column("rank", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for i, (item, score) in enumerate(zip(rec["items"], rec["scores"]), 1):
        table.add_row(str(i), str(item), f"{float(score):.4f}")
    console.print(table)


def _recommend_from_registry(model: str, items: list[str], k: int, exclude_seen: bool, tracking_uri, workdir) -> dict:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from gru4rec.errors import ModelFileError
    from tasks.registry import embedded_tracking_uri

    uri = tracking_uri or embedded_tracking_uri(Path(workdir) / "mlflow")[0]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if "@" in model:
        name, alias = model.split("@", 1)
        model_uri = f"models:/{name}@{alias}"
    elif "/" in model:
        model_uri = f"models:/{model}"
    else:
        model_uri = f"models:/{model}@champion"
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as e:
        raise ModelFileError(f"cannot load {model_uri} from {uri}: {e.message.splitlines()[0]}") from None
    out = pyfunc.predict(pd.DataFrame({"items": [items]}), params={"k": k, "exclude_seen": exclude_seen})
    row = out.iloc[0]
    return {
        "items": list(row["items"]),
        "scores": list(row["scores"]),
        "unknown_items": list(row["unknown_items"]),
        "fallback": bool(row["fallback"]),
    }


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err else ""))
    return "; ".join(parts)


def main() -> None:
    try:
        app()
    except PipelineError as e:  # an error raised outside a command's own handling
        err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
