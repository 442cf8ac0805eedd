"""Data validation of the canonical events tables with Great Expectations (GX 1.x).

`validate_events` runs one lean GX expectation suite per ingested table (events, and test/valid for
pre-split sources) on an ephemeral GX context and writes, into ``out_dir`` only:

* ``validation_result.json`` - the full GX suite results of every table (``.to_json_dict()``);
* ``data_docs/`` - GX Data Docs HTML (when ``cfg.data_docs``), rendered by a Data Docs site whose
  ``base_directory`` is ``out_dir/data_docs`` (GX 1.x ``context.build_data_docs()`` over the
  in-memory validation-results store; ``data_docs/index.html`` is the entry page);
* ``<stem>.dedup.parquet`` - a deduplicated copy of a table, only when ``cfg.drop_duplicates`` is set
  and the table has duplicate (session_key, item_id, timestamp) rows;
* ``validation_manifest.json`` - written atomically and last: overall success, one flat record per
  check, duplicate counts, timings, and the ``tables`` downstream steps must read.

Checks per table (GX unless marked):

* required columns ``session_key``, ``item_id``, ``timestamp`` present;
* column types: session_key and item_id Int64 or String, timestamp Int64, rating Float64;
* no null session_key / item_id / timestamp;
* timestamp (epoch ms) within [cfg.min_timestamp, now + cfg.max_future_days];
* rating within the domain (cfg.rating_min/max, else ``RATING_DOMAINS[fmt]``) when present;
* at least cfg.min_rows rows;
* **computed in Polars, not GX**: the fraction of duplicate (session_key, item_id, timestamp) rows
  (rows beyond the first occurrence) is at most cfg.max_duplicate_fraction. GX's
  ``ExpectCompoundColumnsToBeUnique`` on pandas costs ~1 s per 3M rows and counts every member of a
  duplicate group rather than the surplus rows, so this one statistic is a named Polars check
  (``engine: "polars"`` in the manifest) reported beside the GX ones;
* **computed in Polars**: the row count equals the ``rows`` recorded by ingest (when recorded).

Value checks (nulls, ranges) are only added for columns of the right type: a wrong type is reported
by the type check, and GX would raise on e.g. a datetime column compared with integer bounds.

Polars -> pandas: GX has no Polars engine. Arrow-backed pandas columns
(``use_pyarrow_extension_array=True``) were tried and rejected: GX's range metric falls back to a
per-row Python ``Series.map`` for any dtype other than numpy int/float (measured at 3M rows: GX
2.4 s vs 0.17 s with numpy columns), and its type check cannot tell ``int64[pyarrow]`` apart
(observed type "int"). So numeric columns without nulls become numpy int64/float64 (vectorised in
GX), integer columns with nulls become pandas' masked ``Int64`` (so the type check still sees an
integer column), and strings become ``StringDtype()``. The conversion time and the GX time are
measured separately. Caveat: a timestamp column *with nulls* is masked ``Int64``, for which GX's
range check takes its per-row path (~1 s per million rows); that only happens on data that already
fails the null check.

On failure the JSON (and HTML) are still written, then `DataValidationError` is raised naming every
failed check with counts and a few offending values; it carries ``failures`` and ``report_path``.

GX's own md5 fingerprint of the whole pandas batch (most of its run time on large tables) is
switched off during the run by lowering GX's private ``HASH_THRESHOLD`` under a module lock (GX
1.x has no public switch for it); see `_no_batch_fingerprint`.

GX is imported inside the function (importing it takes seconds), in a background thread that overlaps
the first table's read, Polars checks and pandas conversion. Its progress bars are disabled via
the context's ``progress_bars`` config and its loggers are quieted to ERROR while it runs.

I/O errors are not caught here: an OSError while reading or writing a table (other than a missing
file, which is reported as `DataFormatError`) reaches the caller unchanged, so the task's retry
policy can tell a transient failure from bad data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gru4rec.data.config import RATING_DOMAINS, SourceFormat
from gru4rec.errors import DataFormatError, DataValidationError
from gru4rec.io import sha256_file, write_json_atomic, write_parquet_atomic

KEY_COLUMNS = ("session_key", "item_id", "timestamp")
ALLOWED_DTYPES: dict[str, tuple[pl.DataType, ...]] = {
    "session_key": (pl.Int64(), pl.String()),
    "item_id": (pl.Int64(), pl.String()),
    "timestamp": (pl.Int64(),),
    "rating": (pl.Float64(),),
}
# Names GX's pandas type check accepts for the pandas dtypes `_to_pandas` produces.
_GX_TYPE_NAMES = {"Int64": ["int64", "Int64Dtype"], "String": ["StringDtype"], "Float64": ["float64"]}
N_EXAMPLES = 5
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": N_EXAMPLES}
MANIFEST_NAME = "validation_manifest.json"
RESULT_NAME = "validation_result.json"
DOCS_DIR = "data_docs"
_MS_PER_DAY = 86_400_000


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_rows: int = Field(default=100, ge=1, description="Fewer events than this fails validation.")
    min_timestamp: str = Field(default="1995-01-01", description="Earliest plausible event time (UTC date).")
    max_future_days: float = Field(default=1.0, ge=0, description="Events later than now + this fail validation.")
    rating_min: float | None = Field(default=None, description="Rating domain; None = the source's own domain.")
    rating_max: float | None = Field(default=None, description="Upper end of the rating domain (see rating_min).")
    drop_duplicates: bool = Field(
        default=False, description="Drop exact duplicate (session, item, time) rows instead of only reporting them."
    )
    max_duplicate_fraction: float = Field(
        default=0.05, ge=0, le=1, description="More duplicate (session, item, time) rows than this fraction fails."
    )
    data_docs: bool = Field(default=True, description="Also render GX Data Docs HTML beside the JSON result.")


def validate_events(
    ingest_manifest: dict,
    ingest_dir: Path,
    cfg: ValidationConfig,
    fmt: SourceFormat,
    out_dir: Path,
) -> dict:
    """Validate every table of an ingest manifest; write results to out_dir; return the manifest.

    ``ingest_manifest["tables"]`` maps a role ("events", "test", "valid") to
    ``{"file": name relative to ingest_dir, "rows": N, "sha256": ...}``. The returned (and written)
    ``validation_manifest.json`` has ``success``, ``checks`` (one record per check: table,
    expectation, engine, description, column, success, observed, unexpected_count, examples),
    ``duplicates`` ({role: {count, fraction, dropped}}), ``timings`` (seconds: read_s, polars_s,
    to_pandas_s, gx_import_s (in a background thread, overlapping the first read/checks), gx_import_wait_s
    (the part of it the run waited for), gx_s, dedup_write_s, data_docs_s, total_s), ``window`` (the timestamp / rating bounds
    used), ``reports`` (result JSON and Data Docs index, relative to out_dir) and ``tables``: the
    files downstream steps read ({role: {file, rows, sha256}}; ``file`` is absolute for an ingest
    file, relative to out_dir for a deduplicated one). Raises DataValidationError after writing
    everything when any check fails.
    """
    t_start = time.perf_counter()
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables_in = (ingest_manifest or {}).get("tables") or {}
    if not tables_in:
        raise DataFormatError("ingest manifest lists no tables to validate", hint="Re-run ingest.")

    run = _Run(cfg=cfg, bounds=_bounds(cfg, fmt), out_dir=out_dir)  # starts GX's import in a thread
    for role, entry in tables_in.items():
        _validate_table(run, role, entry, ingest_dir)
    result_path = write_json_atomic(out_dir / RESULT_NAME, run.gx_results)
    docs_index = _build_data_docs(run)
    run.timings["total_s"] = time.perf_counter() - t_start

    manifest = _manifest(run, docs_index)
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    if not manifest["success"]:
        failures = [c for c in run.checks if not c["success"]]
        raise DataValidationError(
            _failure_message(run.checks, out_dir, result_path, docs_index), failures, str(result_path)
        )
    return manifest


# --------------------------------------------------------------------------------------------------
# One run, table by table

_TIMING_KEYS = (
    "read_s",
    "polars_s",
    "to_pandas_s",
    "gx_import_s",
    "gx_import_wait_s",
    "gx_s",
    "dedup_write_s",
    "data_docs_s",
)


@dataclasses.dataclass
class _Run:
    """What one `validate_events` call accumulates over its tables."""

    cfg: ValidationConfig
    bounds: dict
    out_dir: Path
    # GX's import (seconds of pure Python) runs in a thread while the first table is read, checked in
    # Polars and converted to pandas (native code that releases the GIL); joined before GX is used.
    gx_import: _GxImport = dataclasses.field(default_factory=lambda: _GxImport())
    context: Any = None  # the ephemeral GX context, made once GX is imported
    timings: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(_TIMING_KEYS, 0.0))
    checks: list[dict] = dataclasses.field(default_factory=list)
    gx_results: dict[str, dict] = dataclasses.field(default_factory=dict)
    duplicates: dict[str, dict] = dataclasses.field(default_factory=dict)
    tables: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def docs_dir(self) -> Path:
        return self.out_dir / DOCS_DIR


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[key]``."""
    t = time.perf_counter()
    yield
    timings[key] += time.perf_counter() - t


def _validate_table(run: _Run, role: str, entry: dict, ingest_dir: Path) -> None:
    """Read one ingested table, check it in Polars and GX, and record its checks and output file."""
    path = ingest_dir / entry["file"]
    if not path.is_file():
        raise DataFormatError(f"ingested table {role!r} not found", file=str(path), hint="Re-run ingest.")
    with _timed(run.timings, "read_s"):
        df = pl.read_parquet(path)
    with _timed(run.timings, "polars_s"):
        table_checks, dup_mask, dup_count = _polars_checks(role, df, entry, run.cfg)

    result = _gx_validate(run, role, df)
    run.gx_results[role] = result.to_json_dict()
    run.checks.extend(_gx_checks(role, result, df.schema) + table_checks)

    run.tables[role], dropped = _table_output(run, entry, path, df, dup_mask, dup_count)
    run.duplicates[role] = {
        "count": dup_count,
        "fraction": (dup_count / df.height) if (dup_count is not None and df.height) else None,
        "dropped": dropped,
    }


def _gx_validate(run: _Run, role: str, df: pl.DataFrame):
    """Convert one table to pandas and run its GX suite; the first table waits for GX's import."""
    type_ok = {c: df.schema[c] in allowed for c, allowed in ALLOWED_DTYPES.items() if c in df.schema}
    with _timed(run.timings, "to_pandas_s"):
        pdf = _to_pandas(df)
    if run.context is None:
        run.timings["gx_import_s"], run.timings["gx_import_wait_s"] = run.gx_import.join()
        with _quiet_gx():
            run.context = _make_context(run.docs_dir if run.cfg.data_docs else None)
    with _timed(run.timings, "gx_s"), _quiet_gx():
        return _run_gx(run.context, role, pdf, df.schema, type_ok, run.bounds, run.cfg)


def _table_output(
    run: _Run, entry: dict, path: Path, df: pl.DataFrame, dup_mask: pl.Series | None, dup_count: int | None
) -> tuple[dict, bool]:
    """The table downstream steps read, and whether it is a deduplicated copy.

    The ingest file itself, or - when ``cfg.drop_duplicates`` is set and the table has duplicates -
    ``<stem>.dedup.parquet`` in out_dir; either path relative to out_dir, so that the ingest and
    validation directories can move together (prepare publishes them only when all steps passed).
    """
    if not (run.cfg.drop_duplicates and dup_count):
        relative = os.path.relpath(path.resolve(), run.out_dir.resolve())
        return {"file": relative, "rows": df.height, "sha256": entry.get("sha256")}, False
    with _timed(run.timings, "dedup_write_s"):
        dedup = df.filter(~dup_mask)
        dest = run.out_dir / f"{Path(entry['file']).stem}.dedup.parquet"
        write_parquet_atomic(dedup, dest, compression="lz4")  # an intermediate, like ingest's
        return {"file": dest.name, "rows": dedup.height, "sha256": sha256_file(dest)}, True


def _build_data_docs(run: _Run) -> str | None:
    """Render the Data Docs site (when asked for); its index page relative to out_dir, or None."""
    if not run.cfg.data_docs:
        return None
    with _timed(run.timings, "data_docs_s"), _quiet_gx():
        run.context.build_data_docs()
    return f"{DOCS_DIR}/index.html" if (run.docs_dir / "index.html").is_file() else None


def _manifest(run: _Run, docs_index: str | None) -> dict:
    return {
        "success": all(c["success"] for c in run.checks),
        "checks": run.checks,
        "duplicates": run.duplicates,
        "timings": {k: round(v, 4) for k, v in run.timings.items()},
        "window": run.bounds["public"],
        "reports": {"validation_result": RESULT_NAME, "data_docs_index": docs_index},
        "tables": run.tables,
    }


# --------------------------------------------------------------------------------------------------
# Bounds and conversion


def _parse_utc_ms(text: str) -> int:
    """'1995-01-01' or an ISO datetime (naive = UTC) -> epoch milliseconds."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DataFormatError(
            "validation.min_timestamp is not an ISO date", value=text, hint="Use e.g. 1995-01-01."
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _ms_to_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def _bounds(cfg: ValidationConfig, fmt: SourceFormat) -> dict:
    min_ms = _parse_utc_ms(cfg.min_timestamp)
    now_ms = int(time.time() * 1000)
    max_ms = now_ms + int(cfg.max_future_days * _MS_PER_DAY)
    domain = RATING_DOMAINS.get(SourceFormat(fmt)) if fmt is not None else None
    r_min = cfg.rating_min if cfg.rating_min is not None else (domain[0] if domain else None)
    r_max = cfg.rating_max if cfg.rating_max is not None else (domain[1] if domain else None)
    return {
        "ts_min": min_ms,
        "ts_max": max_ms,
        "rating_min": r_min,
        "rating_max": r_max,
        "public": {
            "timestamp_min_ms": min_ms,
            "timestamp_max_ms": max_ms,
            "timestamp_min": _ms_to_text(min_ms),
            "timestamp_max": _ms_to_text(max_ms),
            "rating_min": r_min,
            "rating_max": r_max,
        },
    }


def _to_pandas(df: pl.DataFrame):
    """Polars -> pandas with dtypes GX computes fast and types correctly (see module docstring)."""
    import pandas as pd
    import pyarrow as pa

    cols = {}
    for name, s in zip(df.columns, df.get_columns(), strict=True):
        if s.dtype.is_numeric() and s.null_count() == 0:
            cols[name] = s.to_numpy()  # zero-copy for a single-chunk column without nulls
        elif s.dtype.is_integer():
            cols[name] = s.to_arrow().to_pandas(types_mapper=lambda t: pd.Int64Dtype() if t == pa.int64() else None)
        elif s.dtype == pl.String:
            cols[name] = s.to_arrow().to_pandas(types_mapper=lambda t: pd.StringDtype())
        else:
            cols[name] = s.to_pandas()
    return pd.DataFrame(cols, copy=False)


# --------------------------------------------------------------------------------------------------
# Great Expectations


class _GxImport:
    """Import great_expectations in a background thread; `join` re-raises its error, if any.

    Returns (import seconds, seconds the caller waited for it). Importing is thread-safe (per-module
    import locks); the thread only imports, it never touches data.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="gx-import", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t = time.perf_counter()
        try:
            with _quiet_gx():
                import great_expectations  # noqa: F401
        except BaseException as e:  # re-raised in the caller's thread by join()
            self.error = e
        self.seconds = time.perf_counter() - t

    def join(self) -> tuple[float, float]:
        t = time.perf_counter()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.seconds, time.perf_counter() - t


_GX_LOGGERS = ("great_expectations", "great_expectations.core")
_QUIET_LOCK = threading.Lock()
_quiet = {"users": 0, "levels": []}  # guarded by _QUIET_LOCK


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Silence GX's own logging (INFO/WARNING chatter) while it runs; restore the levels after.

    Safe when validations overlap in several threads: the first to enter saves the levels and the
    last to leave restores them (entering and leaving one at a time would restore ERROR for good).
    """
    loggers = [logging.getLogger(n) for n in _GX_LOGGERS]
    with _QUIET_LOCK:
        if _quiet["users"] == 0:
            _quiet["levels"] = [lg.level for lg in loggers]
            for lg in loggers:
                lg.setLevel(logging.ERROR)
        _quiet["users"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet["users"] -= 1
            if _quiet["users"] == 0:
                for lg, level in zip(loggers, _quiet["levels"], strict=True):
                    lg.setLevel(level)


def _make_context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["local_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _suite_for(role: str, schema: pl.Schema, type_ok: dict[str, bool], bounds: dict, min_rows: int):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    checks = [gxe.ExpectTableColumnsToMatchSet(column_set=list(KEY_COLUMNS), exact_match=False)]
    for col, allowed in ALLOWED_DTYPES.items():
        if col not in schema:
            continue
        names = [n for dtype in allowed for n in _GX_TYPE_NAMES[str(dtype)]]
        checks.append(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=names))
    checks += [gxe.ExpectColumnValuesToNotBeNull(column=col) for col in KEY_COLUMNS if col in schema]
    if type_ok.get("timestamp"):
        checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="timestamp", min_value=bounds["ts_min"], max_value=bounds["ts_max"]
            )
        )
    if type_ok.get("rating") and (bounds["rating_min"] is not None or bounds["rating_max"] is not None):
        checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="rating", min_value=bounds["rating_min"], max_value=bounds["rating_max"]
            )
        )
    checks.append(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows))
    # Given to the constructor, not added one by one: suite.add_expectation on a suite that is not
    # yet in a context looks the suite's name up in GX's process-wide current context - another
    # validation's, when two run in one process - and writes the expectation into it.
    return gx.ExpectationSuite(name=f"{role}_events", expectations=checks)


def _run_gx(context, role, pdf, schema, type_ok, bounds, cfg: ValidationConfig):
    import great_expectations as gx

    batch_def = (
        context.data_sources.add_pandas(f"{role}_source")
        .add_dataframe_asset(role)
        .add_batch_definition_whole_dataframe(f"{role}_whole")
    )
    suite = context.suites.add(_suite_for(role, schema, type_ok, bounds, cfg.min_rows))
    vd = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{role}_validation", data=batch_def, suite=suite)
    )
    with _no_batch_fingerprint():
        return vd.run(batch_parameters={"dataframe": pdf}, result_format=RESULT_FORMAT)


# Held for the whole time GX's HASH_THRESHOLD is lowered (see `_no_batch_fingerprint`).
_FINGERPRINT_LOCK = threading.RLock()


@contextlib.contextmanager
def _no_batch_fingerprint() -> Iterator[None]:
    """Skip GX's md5 fingerprint of the whole pandas batch while validating.

    GX's PandasExecutionEngine hashes every DataFrame smaller than its module constant
    HASH_THRESHOLD (1e9 bytes) with ``pd.util.hash_pandas_object`` + md5, only to store a
    ``pandas_data_fingerprint`` batch marker. On 31M events x 3 Int64 columns that is ~4 s of the
    ~5 s GX spends; the expectations themselves take ~0.6 s (3M rows: the hash ~0.2 s, GX 0.1 s
    with the patch vs 0.3-0.6 s without). The ingest manifest already carries a file sha256.

    GX 1.x offers no public switch: every pandas asset type (dataframe, parquet, csv, ...) loads its
    batch through ``PandasExecutionEngine.get_batch_data_and_markers``, which fingerprints whenever
    ``df.memory_usage().sum() < HASH_THRESHOLD``; batch definitions and ``batch_parameters`` do not
    reach it. So the private constant is lowered to 0 for the run and restored after. It is one
    process-wide value, so the change happens under `_FINGERPRINT_LOCK`, held until it is restored:
    validations in two threads take turns in GX instead of one restoring the constant under the
    other (or restoring 0 for good). A GX without the constant keeps its default (slower, correct).
    """
    try:
        from great_expectations.execution_engine import pandas_execution_engine as engine
    except ImportError:  # pragma: no cover - a GX layout without the module: keep its default
        engine = None
    if getattr(engine, "HASH_THRESHOLD", None) is None:  # pragma: no cover - GX renamed the constant
        yield
        return
    with _FINGERPRINT_LOCK:
        before = engine.HASH_THRESHOLD
        engine.HASH_THRESHOLD = 0
        try:
            yield
        finally:
            engine.HASH_THRESHOLD = before


# --------------------------------------------------------------------------------------------------
# Check records


def _plain(value: Any) -> Any:
    """numpy/pandas scalars -> JSON-able Python values (NaN/NA -> None)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        with contextlib.suppress(TypeError, ValueError):  # not a one-element numpy/pandas value
            value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is not None and not isinstance(value, (bool, int, float, str, list, dict)):
        try:
            import pandas as pd

            if pd.isna(value):
                return None
        except (TypeError, ValueError):
            pass
        return str(value)
    return value


def _fmt_bound(col: str, value: float | int | None, missing: str) -> str:
    if value is None:
        return missing  # an open end of the range: "-inf" below, "inf" above
    return _ms_to_text(int(value)) if col == "timestamp" else f"{value:g}"


def _gx_checks(role: str, result, schema: pl.Schema) -> list[dict]:
    """One check record per expectation result of a GX suite run."""
    return [_gx_check(role, r, schema) for r in result.results]


def _gx_check(role: str, r, schema: pl.Schema) -> dict:
    etype = r.expectation_config.type
    kw = r.expectation_config.kwargs
    res = r.result or {}
    count = res.get("unexpected_count")
    examples = [_plain(v) for v in (res.get("partial_unexpected_list") or [])][:N_EXAMPLES]
    observed = _gx_error(r) or res.get("observed_value")
    desc, detail, observed, examples = _describe(etype, kw, res, schema, observed, count, examples)
    if isinstance(observed, str) and observed.startswith("error: "):
        detail = observed
    return {
        "table": role,
        "expectation": etype,
        "engine": "great_expectations",
        "description": desc,
        "column": kw.get("column"),
        "success": bool(r.success),
        "observed": _plain(observed) if not isinstance(observed, (list, dict)) else observed,
        "unexpected_count": int(count) if count is not None else None,
        "examples": examples,
        "detail": detail,
    }


def _gx_error(r) -> str | None:
    """'error: <messages>' when GX raised inside a failed expectation or its metrics, else None."""
    exc = (r.exception_info or {}) if not r.success else {}
    nested = [v for v in exc.values() if isinstance(v, dict)]
    if not (exc.get("raised_exception") or any(v.get("raised_exception") for v in nested)):
        return None
    msgs = [exc.get("exception_message")] + [v.get("exception_message") for v in nested]
    return "error: " + "; ".join(m for m in msgs if m)


def _describe(etype: str, kw: dict, res: dict, schema: pl.Schema, observed: Any, count, examples: list):
    """(description, detail, observed, examples) of one GX expectation result, in the table's terms."""
    col = kw.get("column")
    if etype == "expect_table_columns_to_match_set":
        missing = [c for c in KEY_COLUMNS if c not in schema]
        found = list(schema.names())
        desc = f"columns {', '.join(KEY_COLUMNS)} present"
        return desc, f"missing {missing}, found {found}", {"columns": found, "missing": missing}, examples
    if etype == "expect_column_values_to_be_in_type_list":
        observed = str(schema[col])
        return f"{col} type {' or '.join(str(d) for d in ALLOWED_DTYPES[col])}", f"got {observed}", observed, examples
    if etype == "expect_column_values_to_not_be_null":
        rows = [f"row {_plain(i)}" for i in (res.get("partial_unexpected_index_list") or [])][:N_EXAMPLES]
        return f"{col} not null", f"{count} nulls", observed, rows
    if etype == "expect_column_values_to_be_between":
        low, high = _fmt_bound(col, kw.get("min_value"), "-inf"), _fmt_bound(col, kw.get("max_value"), "inf")
        desc = f"{col} between {low} and {high}"
        return desc, f"{count} rows outside, e.g. {examples}", observed, examples
    if etype == "expect_table_row_count_to_be_between":
        return f"at least {kw.get('min_value')} rows", f"got {observed}", observed, examples
    return etype, f"observed {observed}", observed, examples  # pragma: no cover - the suite holds only the above


def _duplicate_mask(df: pl.DataFrame) -> pl.Series:
    """True for every row whose (session_key, item_id, timestamp) occurred in an earlier row.

    Exact, and fast in the common case: a 64-bit row hash is computed and sorted; rows whose hash is
    unique cannot be duplicates, so the exact (struct) comparison runs only on the few rows whose
    hash repeats. A hash collision can only add candidates, never hide a duplicate.
    """
    h = df.select(pl.struct(*KEY_COLUMNS).hash().alias("h")).to_series()
    mask = pl.zeros(df.height, dtype=pl.Boolean, eager=True).alias("duplicate")
    # A sort of one u64 column is much cheaper than a hash-table pass (is_duplicated/n_unique).
    hs = h.sort()
    repeated = hs.slice(1).filter(hs.slice(1) == hs.slice(0, df.height - 1))
    if repeated.is_empty():
        return mask
    candidates = h.is_in(repeated.unique().implode())
    idx = candidates.arg_true()
    sub = df.select(KEY_COLUMNS).filter(candidates)
    later = sub.select(~pl.struct(*KEY_COLUMNS).is_first_distinct()).to_series()
    return mask.scatter(idx.filter(later), True)


def _polars_checks(role: str, df: pl.DataFrame, entry: dict, cfg: ValidationConfig):
    """Checks computed in Polars: duplicate-key fraction and row count vs ingest manifest."""
    records = []
    dup_mask, dup_count = None, None
    if all(c in df.schema for c in KEY_COLUMNS) and df.height:
        dup_mask = _duplicate_mask(df)
        dup_count = int(dup_mask.sum())
        fraction = dup_count / df.height
        examples = []
        if dup_count:
            examples = df.filter(dup_mask).head(N_EXAMPLES).select(KEY_COLUMNS).to_dicts()
        records.append(
            {
                "table": role,
                "expectation": "duplicate_key_fraction_at_most",
                "engine": "polars",
                "description": f"duplicate (session_key, item_id, timestamp) rows <= {cfg.max_duplicate_fraction:.2%}",
                "column": list(KEY_COLUMNS),
                "success": fraction <= cfg.max_duplicate_fraction,
                "observed": {"duplicates": dup_count, "fraction": fraction},
                "unexpected_count": dup_count,
                "examples": examples,
                "detail": f"{dup_count} duplicates ({fraction:.2%}), e.g. {examples[:3]}",
            }
        )
    expected_rows = entry.get("rows")
    if expected_rows is not None:
        records.append(
            {
                "table": role,
                "expectation": "row_count_matches_ingest_manifest",
                "engine": "polars",
                "description": f"row count equals ingest manifest ({expected_rows})",
                "column": None,
                "success": int(expected_rows) == df.height,
                "observed": df.height,
                "unexpected_count": None,
                "examples": [],
                "detail": f"file has {df.height} rows",
            }
        )
    return records, dup_mask, dup_count


def _failure_message(checks: list[dict], out_dir: Path, result_path: Path, docs_index: str | None) -> str:
    parts = []
    for role in dict.fromkeys(c["table"] for c in checks):
        mine = [c for c in checks if c["table"] == role]
        failed = [c for c in mine if not c["success"]]
        if failed:
            items = "; ".join(f"{c['description']}: {c['detail']}" for c in failed)
            parts.append(f"validation failed for {role} ({len(failed)} of {len(mine)} checks): {items}")
    where = f"full report: {result_path}"
    if docs_index:
        where += f", Data Docs: {out_dir / docs_index}"
    where += f", summary: {out_dir / MANIFEST_NAME}"
    return " | ".join(parts) + f". {where}"


__all__ = ["validate_events", "MANIFEST_NAME", "RESULT_NAME", "KEY_COLUMNS"]
