"""Readers: turn a raw interaction log (any supported format, plain / .gz / .zip) into the canonical events table.

Canonical events table (see HELPERS.md), columns in order:
``session_key`` (Int64 if integral, else String), ``item_id`` (Int64 if integral, else String),
``timestamp`` (Int64, UTC epoch milliseconds), ``rating`` (Float64, only for sources with ratings).
Row order is the file's order. Blank lines are skipped.

Design:

* Every delimited format is read by Polars with all fields as strings and cast with ``strict=False``
  in one lazy pass (fast: the casts cost about as much as a typed read). If anything does not cast, or
  Polars rejects the layout, a second, diagnostic pass reads the file line by line as one string
  column and finds the *first* offending line with vectorised expressions, then raises
  `DataFormatError` naming file, line (1-based, header counted), column and value.
* ML-1M's ``::`` separator is two bytes, which Polars' CSV reader rejects: lines are read as one
  column and split with ``str.splitn("::", 5)``. A ``:`` inside a field therefore never shifts
  columns; such a field (e.g. ``12:3``) is not a number and is reported as an error naming the line.
* Compression is recognised by magic bytes (gzip ``1f 8b``, zip ``PK``), not only by extension.
* Bytes that are not valid UTF-8 are decoded as latin-1 (MovieLens files contain such bytes).
"""

from __future__ import annotations

import gzip
import io
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gru4rec.data.config import ColumnMapping, SourceFormat
from gru4rec.errors import DataFormatError

HEAD_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
PARQUET_MAGIC = b"PAR1"
# Preferred members of a zip archive, in order (ml-1m.zip holds ml-1m/ratings.dat, ml-100k.zip ml-100k/u.data).
ZIP_MEMBER_PRIORITY = ("ratings.dat", "u.data", "ratings.csv")
# A byte that does not occur in text logs: used as "separator" to read whole lines as one column.
_LINE_SEP = "\x1f"

YOOCHOOSE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"

FORMAT_HELP = (
    "Supported formats: ml-1m (ratings.dat, UserID::MovieID::Rating::Timestamp), ml-100k (u.data, tab-separated "
    "user item rating timestamp), ml-latest (ratings.csv with header userId,movieId,rating,timestamp), yoochoose "
    "(yoochoose-clicks.dat: SessionID,ISO-time,ItemID,Category), gru4rec-tsv (tab-separated with header "
    "SessionId ItemId Time), diginetica (';'-separated, header sessionId;userId;itemId;timeframe;eventdate), "
    "csv and parquet (with a column mapping: session, item, time, time_unit)"
)
FORMAT_HINT = (
    "Pass the format explicitly with --format (one of: "
    + ", ".join(f.value for f in SourceFormat)
    + "); for csv/parquet also give the column mapping (session, item, time, time_unit)"
)


# --------------------------------------------------------------------------------------------------
# Opening files: plain, gzip, zip
# --------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """An opened source: what Polars should read plus the first bytes for sniffing."""

    path: Path
    name: str  # shown in messages, e.g. "ml-1m.zip:ml-1m/ratings.dat"
    basename: str  # file name without .gz / the zip member's base name
    head: bytes
    data: Path | bytes | None = None  # None until loaded (detection only needs head)
    compression: str = "none"
    member: str | None = None
    latin1: bool = False


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _pick_member(zf: zipfile.ZipFile, path: Path) -> str:
    files = [i.filename for i in zf.infolist() if not i.is_dir()]
    by_base: dict[str, str] = {}
    for m in files:
        by_base.setdefault(_strip_gz(m.rsplit("/", 1)[-1]).lower(), m)
    for want in ZIP_MEMBER_PRIORITY:
        if want in by_base:
            return by_base[want]
    data_like = [m for m in files if not m.rsplit("/", 1)[-1].startswith(".") and "__MACOSX" not in m]
    if len(data_like) == 1:
        return data_like[0]
    raise DataFormatError(
        "cannot tell which member of the zip archive holds the events",
        file=str(path),
        value=", ".join(files[:20]) or "(empty archive)",
        hint=f"Expected one of {', '.join(ZIP_MEMBER_PRIORITY)} or a single-file archive; extract the file "
        "and pass its path instead",
    )


def _gunzip(blob: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataFormatError(
            f"corrupt or truncated gzip data ({type(e).__name__}: {e})",
            file=name,
            hint="Re-download or re-compress the file",
        ) from None


def _open(path: str | Path, load: bool) -> _Raw:
    """Open `path` (plain, gzip or zip, by magic bytes). With load=True also materialise the data."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFormatError("file not found", file=str(path), hint="Check the path given as the source")
    magic = _magic(path)
    if magic.startswith(GZIP_MAGIC):
        name = str(path)
        if load:
            data = _gunzip(path.read_bytes(), name)
            head = data[:HEAD_BYTES]
        else:
            data = None
            try:
                with gzip.open(path, "rb") as f:
                    head = f.read(HEAD_BYTES)
            except (OSError, EOFError, zlib.error) as e:
                raise DataFormatError(
                    f"corrupt or truncated gzip data ({type(e).__name__}: {e})",
                    file=name,
                    hint="Re-download or re-compress the file",
                ) from None
        return _Raw(path, name, _strip_gz(path.name), head, data, "gzip")
    if magic in ZIP_MAGICS:
        try:
            with zipfile.ZipFile(path) as zf:
                member = _pick_member(zf, path)
                name = f"{path}:{member}"
                with zf.open(member) as f:
                    blob = f.read() if load else f.read(HEAD_BYTES)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise DataFormatError(
                f"corrupt zip archive ({type(e).__name__}: {e})", file=str(path), hint="Re-download the archive"
            ) from None
        base = member.rsplit("/", 1)[-1]
        if blob[:2] == GZIP_MAGIC:
            blob = _gunzip(blob, name) if load else _gunzip_head(blob, name)
            base = _strip_gz(base)
        data = blob if load else None
        return _Raw(path, name, base, blob[:HEAD_BYTES], data, "zip", member=member)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    return _Raw(path, str(path), path.name, head, path if load else None)


def _gunzip_head(blob: bytes, name: str) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob, HEAD_BYTES)
    except zlib.error as e:
        raise DataFormatError(f"corrupt gzip data ({e})", file=name) from None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.start >= len(b) - 3 and len(b) >= HEAD_BYTES  # a multi-byte char cut at the end of the head


def _to_utf8(raw: _Raw) -> None:
    """Re-encode the data as UTF-8, reading it as latin-1 when it is not valid UTF-8."""
    if raw.latin1:
        return
    blob = raw.data.read_bytes() if isinstance(raw.data, Path) else raw.data
    try:
        blob.decode("utf-8")
        return
    except UnicodeDecodeError:
        raw.data = blob.decode("latin-1").encode("utf-8")
        raw.head = raw.data[:HEAD_BYTES]
        raw.latin1 = True


def _head_lines(head: bytes, n: int = 5) -> list[str]:
    text = head.decode("utf-8", errors="replace") if _is_utf8(head) else head.decode("latin-1")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if len(head) >= HEAD_BYTES and len(lines) > 1:
        lines = lines[:-1]  # possibly cut
    return [ln.rstrip("\r") for ln in lines if ln.strip()][:n]


def _check_text(raw: _Raw) -> None:
    if not raw.head.strip():
        raise DataFormatError("the file is empty (no events)", file=raw.name, hint="Check the source path and file")
    nul = raw.head.find(b"\x00")
    if nul >= 0:
        raise DataFormatError(
            "the file contains NUL bytes: it is binary or corrupt, not a text log",
            file=raw.name,
            line=raw.head.count(b"\n", 0, nul) + 1,
            value=raw.head[max(0, nul - 20) : nul + 20].decode("latin-1"),
            hint="Re-download the file or check that it is the events log",
        )


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------

_RE_ML1M = re.compile(r"^\d+::\d+::\d+(\.\d+)?::\d+$")
_RE_ML100K = re.compile(r"^\d+\t\d+\t\d+(\.\d+)?\t\d+$")
_RE_YOOCHOOSE = re.compile(r"^\d+,\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z,\d+,[^,]*$")
ML_LATEST_HEADER = ["userId", "movieId", "rating", "timestamp"]
DIGINETICA_HEADERS = (
    ["sessionId", "userId", "itemId", "timeframe", "eventdate"],
    ["session_id", "user_id", "item_id", "timeframe", "eventdate"],
)
GRU4REC_TSV_COLUMNS = ("SessionId", "ItemId", "Time")


def _detect_raw(raw: _Raw) -> SourceFormat | None:
    if raw.head[:4] == PARQUET_MAGIC or raw.basename.lower().endswith(".parquet"):
        return SourceFormat.PARQUET
    base = raw.basename.lower()
    if base == "ratings.dat":
        return SourceFormat.ML_1M
    if base == "u.data":
        return SourceFormat.ML_100K
    if base.startswith("yoochoose-clicks") and base.endswith(".dat"):
        return SourceFormat.YOOCHOOSE
    lines = _head_lines(raw.head)
    if not lines:
        return None
    first = lines[0]
    if _RE_ML1M.match(first):
        return SourceFormat.ML_1M
    if _RE_ML100K.match(first):
        return SourceFormat.ML_100K
    if first.split(",") == ML_LATEST_HEADER:
        return SourceFormat.ML_LATEST
    if _RE_YOOCHOOSE.match(first):
        return SourceFormat.YOOCHOOSE
    if all(c in first.split("\t") for c in GRU4REC_TSV_COLUMNS):
        return SourceFormat.GRU4REC_TSV
    if first.split(";") in DIGINETICA_HEADERS:
        return SourceFormat.DIGINETICA
    return None


def detect_format(path: str | Path) -> SourceFormat:
    """Detect the source format from the file name and first lines; only where unambiguous."""
    raw = _open(path, load=False)
    fmt = _detect_raw(raw)
    if fmt is None:
        if raw.head[:4] != PARQUET_MAGIC:
            _check_text(raw)
        lines = _head_lines(raw.head, 1)
        raise DataFormatError(
            f"cannot detect the format of this file. {FORMAT_HELP}",
            file=raw.name,
            line=1 if lines else None,
            value=lines[0] if lines else None,
            hint=FORMAT_HINT,
        )
    return fmt


# --------------------------------------------------------------------------------------------------
# Parsing expressions
# --------------------------------------------------------------------------------------------------

# kind -> (function: string expr -> parsed expr (null where unparseable), description for messages)
_KINDS: dict[str, tuple[Callable[[pl.Expr], pl.Expr], str]] = {
    "int": (lambda e: e.str.strip_chars().cast(pl.Int64, strict=False), "an integer"),
    "float": (lambda e: e.str.strip_chars().cast(pl.Float64, strict=False), "a number"),
    "iso_z": (
        lambda e: e.str.strptime(pl.Datetime("ms"), YOOCHOOSE_TIME_FORMAT, strict=False).dt.epoch("ms"),
        "an ISO-8601 UTC time like 2014-04-07T10:51:09.277Z",
    ),
    "date": (
        lambda e: e.str.strptime(pl.Date, "%Y-%m-%d", strict=False).cast(pl.Int64) * 86_400_000,
        "a date YYYY-MM-DD",
    ),
}


def _parse(kind: str, e: pl.Expr) -> pl.Expr:
    return _KINDS[kind][0](e)


@dataclass(frozen=True)
class _Delimited:
    """A line-oriented format with a fixed field list."""

    fmt: SourceFormat
    sep: str
    header: bool
    fields: tuple[str, ...]  # field names (header names, or documented names)
    checks: tuple[tuple[str, str], ...]  # (field, kind) that must parse
    build: Callable[[dict[str, pl.Expr]], list[pl.Expr]]  # parsed exprs -> canonical columns
    exact: bool = True  # lines must have exactly len(fields) fields (else: at least)


def _epoch_s(e: pl.Expr) -> pl.Expr:
    return e * 1000


def _ml_build(p: dict[str, pl.Expr], u: str, i: str, r: str, t: str) -> list[pl.Expr]:
    return [
        p[u].alias("session_key"),
        p[i].alias("item_id"),
        _epoch_s(p[t]).alias("timestamp"),
        p[r].cast(pl.Float64).alias("rating"),
    ]


_ML1M_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")
_ML100K_FIELDS = ("user_id", "item_id", "rating", "timestamp")
_YOOCHOOSE_FIELDS = ("SessionID", "Timestamp", "ItemID", "Category")

_SPECS: dict[SourceFormat, _Delimited] = {
    SourceFormat.ML_1M: _Delimited(
        SourceFormat.ML_1M,
        "::",
        False,
        _ML1M_FIELDS,
        (("UserID", "int"), ("MovieID", "int"), ("Rating", "float"), ("Timestamp", "int")),
        lambda p: _ml_build(p, "UserID", "MovieID", "Rating", "Timestamp"),
    ),
    SourceFormat.ML_100K: _Delimited(
        SourceFormat.ML_100K,
        "\t",
        False,
        _ML100K_FIELDS,
        (("user_id", "int"), ("item_id", "int"), ("rating", "float"), ("timestamp", "int")),
        lambda p: _ml_build(p, "user_id", "item_id", "rating", "timestamp"),
    ),
    SourceFormat.ML_LATEST: _Delimited(
        SourceFormat.ML_LATEST,
        ",",
        True,
        tuple(ML_LATEST_HEADER),
        (("userId", "int"), ("movieId", "int"), ("rating", "float"), ("timestamp", "int")),
        lambda p: _ml_build(p, "userId", "movieId", "rating", "timestamp"),
    ),
    SourceFormat.YOOCHOOSE: _Delimited(
        SourceFormat.YOOCHOOSE,
        ",",
        False,
        _YOOCHOOSE_FIELDS,
        (("SessionID", "int"), ("Timestamp", "iso_z"), ("ItemID", "int")),
        lambda p: [
            p["SessionID"].alias("session_key"),
            p["ItemID"].alias("item_id"),
            p["Timestamp"].alias("timestamp"),
        ],
    ),
}


def _gru4rec_spec(header: list[str]) -> _Delimited:
    return _Delimited(
        SourceFormat.GRU4REC_TSV,
        "\t",
        True,
        tuple(header),
        (("SessionId", "int"), ("ItemId", "int"), ("Time", "float")),
        lambda p: [
            p["SessionId"].alias("session_key"),
            p["ItemId"].alias("item_id"),
            (p["Time"] * 1000).round().cast(pl.Int64).alias("timestamp"),
        ],
    )


def _diginetica_spec(header: list[str]) -> _Delimited:
    s, _u, i, tf, d = header
    return _Delimited(
        SourceFormat.DIGINETICA,
        ";",
        True,
        tuple(header),
        ((s, "int"), (i, "int"), (tf, "int"), (d, "date")),
        lambda p: [p[s].alias("session_key"), p[i].alias("item_id"), (p[d] + p[tf]).alias("timestamp")],
    )


def _header_of(raw: _Raw, sep: str) -> list[str]:
    lines = _head_lines(raw.head, 1)
    return lines[0].split(sep) if lines else []


def _spec_for(raw: _Raw, fmt: SourceFormat) -> _Delimited:
    if fmt in _SPECS:
        spec = _SPECS[fmt]
        if spec.header:
            got = _header_of(raw, spec.sep)
            if got != list(spec.fields):
                _bad_header(raw, spec.sep, list(spec.fields), got)
        return spec
    if fmt == SourceFormat.GRU4REC_TSV:
        got = _header_of(raw, "\t")
        if not all(c in got for c in GRU4REC_TSV_COLUMNS) or len(set(got)) != len(got):
            _bad_header(raw, "\t", list(GRU4REC_TSV_COLUMNS), got, extra_ok=True)
        return _gru4rec_spec(got)
    if fmt == SourceFormat.DIGINETICA:
        got = _header_of(raw, ";")
        if got not in DIGINETICA_HEADERS:
            _bad_header(raw, ";", DIGINETICA_HEADERS[0], got, alt=DIGINETICA_HEADERS[1])
        return _diginetica_spec(got)
    raise AssertionError(fmt)


def _bad_header(raw, sep, want, got, extra_ok=False, alt=None) -> None:
    line = _head_lines(raw.head, 1)[0]
    shown_sep = {"\t": "tab", ",": "','", ";": "';'"}.get(sep, repr(sep))
    msg = f"unexpected header: expected {shown_sep}-separated columns {sep.join(want)}"
    if alt:
        msg += f" (or {sep.join(alt)})"
    if extra_ok:
        msg += " (extra columns allowed)"
    if len(got) <= 1 and sep not in line:
        msg += f"; the header has no {shown_sep} at all (wrong separator?)"
    raise DataFormatError(msg, file=raw.name, line=1, value=line)


# --------------------------------------------------------------------------------------------------
# Reading delimited formats
# --------------------------------------------------------------------------------------------------


def _scan_strings(raw: _Raw, spec: _Delimited) -> pl.LazyFrame:
    """All fields as strings, in file order, one row per line (blank lines give all-null rows)."""
    if len(spec.sep) == 1:
        return pl.scan_csv(
            raw.data,
            has_header=False,
            skip_lines=1 if spec.header else 0,
            separator=spec.sep,
            quote_char=None,
            schema={f: pl.String for f in spec.fields},
            encoding="utf8",
        )
    n = len(spec.fields)
    return _scan_lines(raw).select(
        pl.col("line")
        .str.strip_chars_end("\r")
        .str.splitn(spec.sep, n + 1)
        .struct.rename_fields([*spec.fields, "_extra"])
        .struct.unnest()
    )


def _scan_lines(raw: _Raw) -> pl.LazyFrame:
    return pl.scan_csv(
        raw.data,
        has_header=False,
        separator=_LINE_SEP,
        quote_char=None,
        schema={"line": pl.String},
        encoding="utf8",
        empty_string_is_null=False,
    )


def _polars_read(raw: _Raw, fn: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    """Run a Polars read; on invalid UTF-8 re-encode from latin-1 and retry once."""
    try:
        return fn()
    except pl.exceptions.ComputeError as e:
        if "utf" in str(e).lower() and not raw.latin1:
            _to_utf8(raw)
            if raw.latin1:
                return fn()
        raise


def _read_delimited(raw: _Raw, spec: _Delimited) -> pl.DataFrame:
    def fast() -> pl.DataFrame:
        lf = _scan_strings(raw, spec)
        parsed = {f: _parse(k, pl.col(f)) for f, k in spec.checks}
        exprs = spec.build(parsed)
        if len(spec.sep) > 1:
            exprs.append(pl.col("_extra").is_not_null().alias("_extra"))
        return lf.select(exprs).collect(engine="streaming")

    try:
        out = _polars_read(raw, fast)
        failed = None
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError) as e:
        out, failed = None, e
    if out is not None:
        extra = out.get_column("_extra").any() if "_extra" in out.columns else False
        out = out.drop("_extra", strict=False)
        if not extra and out.null_count().sum_horizontal().item() == 0:
            return _non_empty(out, raw, spec.header)
    _diagnose(raw, spec)  # raises when it finds the offending line
    if failed is not None:
        raise DataFormatError(
            f"cannot read the file as {spec.fmt.value}: {str(failed).splitlines()[0]}", file=raw.name
        ) from None
    # Only blank lines produced nulls: drop them.
    out = out.filter(~pl.all_horizontal(pl.all().is_null()))
    if out.null_count().sum_horizontal().item():
        raise DataFormatError(f"cannot read the file as {spec.fmt.value}: unparseable values", file=raw.name)
    return _non_empty(out, raw, spec.header)


def _non_empty(out: pl.DataFrame, raw: _Raw, header: bool) -> pl.DataFrame:
    if out.height == 0:
        raise DataFormatError("the file has no events" + (" (only a header line)" if header else ""), file=raw.name)
    return out


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "','", ";": "';'", "::": "'::'"}.get(sep, repr(sep))


def _diagnose(raw: _Raw, spec: _Delimited) -> None:
    """Find the first offending line (vectorised) and raise a DataFormatError about it."""
    lines = _data_lines(raw, spec)
    if lines is None:
        return
    parts = pl.col("line").str.split(spec.sep, literal=True)
    lines = lines.with_columns(parts.alias("parts"), parts.list.len().alias("nf"))
    _check_field_counts(raw, spec, lines)
    _check_values(raw, spec, lines)


def _data_lines(raw: _Raw, spec: _Delimited) -> pl.DataFrame | None:
    """Non-blank data lines (header skipped) with their 1-based line numbers; None if there are none.

    None also when the file cannot be read even as plain lines: the caller then reports Polars' error.
    """
    try:
        lines = _scan_lines(raw).with_row_index("row").collect()
    except pl.exceptions.PolarsError:
        return None
    lines = lines.with_columns(
        (pl.col("row").cast(pl.Int64) + 1).alias("lineno"),
        pl.col("line").str.strip_chars_end("\r").alias("line"),
    )
    if spec.header:
        lines = lines.slice(1)
    lines = lines.filter(pl.col("line").is_not_null() & (pl.col("line").str.strip_chars() != ""))
    return lines if lines.height else None


def _check_field_counts(raw: _Raw, spec: _Delimited, lines: pl.DataFrame) -> None:
    """Raise about the first line with the wrong number of fields."""
    n = len(spec.fields)
    bad_n = (pl.col("nf") != n) if spec.exact else (pl.col("nf") < n)
    if spec.header:
        bad_n = pl.col("nf") != n  # header-defined formats: every line has the header's field count
    bad = lines.filter(bad_n).head(1)
    if bad.height:
        row = bad.row(0, named=True)
        msg = _field_count_message(spec, row["nf"], row["line"])
        raise DataFormatError(msg, file=raw.name, line=row["lineno"], value=row["line"])


def _field_count_message(spec: _Delimited, nf: int, text: str) -> str:
    """Say what is wrong with a line of nf fields, guessing the likely cause (separator, truncation)."""
    n = len(spec.fields)
    if nf == 1:
        others = [_sep_name(s) for s in ("::", "\t", ",", ";", "|") if s != spec.sep and s in text]
        msg = f"line has no {_sep_name(spec.sep)} separator (expected {n} fields: {', '.join(spec.fields)})"
        if others:
            msg += f"; it looks {' / '.join(others)}-separated: wrong separator or wrong --format?"
    elif nf < n:
        msg = f"line has {nf} fields, expected {n} ({', '.join(spec.fields)}): truncated line?"
    else:
        msg = f"line has {nf} fields, expected {n} ({', '.join(spec.fields)})"
        if spec.sep == "::":
            msg += "; a field contains the separator"
    return msg


def _check_values(raw: _Raw, spec: _Delimited, lines: pl.DataFrame) -> None:
    """Raise about the first value that does not parse, checking the columns in spec order."""
    for f, kind in spec.checks:
        j = spec.fields.index(f)
        val = pl.col("parts").list.get(j)
        bad = (
            lines.select("lineno", val.alias("v"), _parse(kind, val).is_null().alias("bad"))
            .filter(pl.col("bad"))
            .head(1)
        )
        if bad.height:
            row = bad.row(0, named=True)
            v = row["v"]
            what = "empty value" if v is None or v.strip() == "" else "value is not " + _KINDS[kind][1]
            raise DataFormatError(
                f"{what} in column {f} (format {spec.fmt.value})",
                file=raw.name,
                line=row["lineno"],
                column=f,
                value=v if v is not None else "",
            )


# --------------------------------------------------------------------------------------------------
# Generic CSV / Parquet with a column mapping
# --------------------------------------------------------------------------------------------------


def _id_expr(name: str, dtype: pl.DataType, out: str) -> pl.Expr:
    """Int64 if the column is integral, else String."""
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int64).alias(out)
    return pl.col(name).cast(pl.String).alias(out)


_ISO_TZ_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%:z")
_ISO_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")


def _iso_to_ms(e: pl.Expr) -> pl.Expr:
    """ISO-8601 (``T`` or space, optional fraction, ``Z``/offset or naive = UTC, or a bare date) -> epoch ms."""
    e = e.str.strip_chars().str.replace(r"Z$", "+00:00").str.replace(" ", "T", literal=True)
    tries = [e.str.strptime(pl.Datetime("ms", "UTC"), f, strict=False).dt.epoch("ms") for f in _ISO_TZ_FORMATS]
    tries += [e.str.strptime(pl.Datetime("ms"), f, strict=False).dt.epoch("ms") for f in _ISO_NAIVE_FORMATS]
    tries.append(e.str.strptime(pl.Date, "%Y-%m-%d", strict=False).cast(pl.Int64) * 86_400_000)
    return pl.coalesce(tries)


def _time_expr(e: pl.Expr, dtype: pl.DataType, m: ColumnMapping) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        return e.dt.epoch("ms")
    if isinstance(dtype, pl.Date):
        return e.cast(pl.Int64) * 86_400_000
    unit = m.time_unit
    if unit == "format":
        fmt = m.time_format or ""
        aware = "%z" in fmt or "%:z" in fmt or "%#z" in fmt or "%Z" in fmt
        dtype = pl.Datetime("ms", "UTC") if aware else pl.Datetime("ms")
        return e.cast(pl.String).str.strptime(dtype, fmt, strict=False).dt.epoch("ms")
    if unit == "iso":
        return _iso_to_ms(e.cast(pl.String))
    if dtype == pl.String:
        as_int = e.str.strip_chars().cast(pl.Int64, strict=False)
        as_float = e.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        as_int = e.cast(pl.Int64, strict=False) if dtype.is_integer() else pl.lit(None, pl.Int64)
        as_float = e.cast(pl.Float64, strict=False)
    if unit == "s":
        return pl.coalesce(as_int * 1000, (as_float * 1000).round().cast(pl.Int64, strict=False))
    if unit == "ms":
        return pl.coalesce(as_int, as_float.round().cast(pl.Int64, strict=False))
    div = 1000 if unit == "us" else 1_000_000
    return pl.coalesce(as_int // div, (as_float / div).floor().cast(pl.Int64, strict=False))


def _read_mapped(raw: _Raw, fmt: SourceFormat, m: ColumnMapping | None) -> pl.DataFrame:
    if m is None:
        raise DataFormatError(
            f"format {fmt.value} needs a column mapping (session, item, time, time_unit)",
            file=raw.name,
            hint="Give the columns mapping in the config (ingest.columns) or on the command line",
        )
    lf, schema, first_line = _scan_mapped(raw, fmt, m)
    wanted = _mapped_columns(raw, fmt, m, schema)
    exprs = _mapped_exprs(m, schema)
    try:
        out = _polars_read(raw, lambda: lf.select(exprs).collect())
    except pl.exceptions.PolarsError as e:
        raise DataFormatError(
            f"cannot read the file as {fmt.value} ({str(e).splitlines()[0]})", file=raw.name
        ) from None
    # A value that did not parse is a null: find the first one and name its line, column and text.
    if out.null_count().sum_horizontal().item():
        _raise_first_null(raw, m, lf, exprs, out.columns, wanted, first_line)
    out = out.with_columns(_narrow_id(out["session_key"]), _narrow_id(out["item_id"]))
    return _non_empty(out, raw, fmt == SourceFormat.CSV)


def _scan_mapped(raw: _Raw, fmt: SourceFormat, m: ColumnMapping) -> tuple[pl.LazyFrame, pl.Schema, int]:
    """(lazy frame, schema, line number of the first data row) of a parquet or csv file."""
    if fmt == SourceFormat.PARQUET:
        try:
            lf = pl.scan_parquet(raw.data if isinstance(raw.data, Path) else io.BytesIO(raw.data))
            schema = lf.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as e:
            raise DataFormatError(
                f"cannot read the file as parquet ({str(e).splitlines()[0]})", file=raw.name
            ) from None
        return lf, schema, 1  # row 1 = first row
    return (*_scan_csv_strings(raw, m), 2)  # line 1 is the header


def _scan_csv_strings(raw: _Raw, m: ColumnMapping) -> tuple[pl.LazyFrame, pl.Schema]:
    """All columns as strings: each mapped column is then parsed the way its role needs."""

    def scan() -> pl.LazyFrame:
        return pl.scan_csv(raw.data, separator=m.separator, infer_schema=False, encoding="utf8")

    try:
        schema = _polars_read(raw, lambda: scan().collect_schema())
    except pl.exceptions.PolarsError as e:
        raise DataFormatError(f"cannot read the file as csv ({str(e).splitlines()[0]})", file=raw.name) from None
    # Scanned again: reading the schema may have re-encoded raw.data from latin-1.
    return scan(), schema


def _mapped_columns(raw: _Raw, fmt: SourceFormat, m: ColumnMapping, schema: pl.Schema) -> dict[str, str]:
    """{role: column} of the mapping; every mapped column must be in the file."""
    wanted = {"session": m.session, "item": m.item, "time": m.time}
    if m.rating:
        wanted["rating"] = m.rating
    missing = [f"{role}={c!r}" for role, c in wanted.items() if c not in schema]
    if missing:
        raise DataFormatError(
            f"mapped column(s) not found: {', '.join(missing)}; the file has columns: {', '.join(schema.names())}",
            file=raw.name,
            line=1 if fmt == SourceFormat.CSV else None,
            hint="Fix the column mapping",
        )
    return wanted


def _mapped_exprs(m: ColumnMapping, schema: pl.Schema) -> list[pl.Expr]:
    """The canonical columns, computed from the mapped ones (null where a value does not parse)."""
    exprs = [
        _id_expr(m.session, schema[m.session], "session_key"),
        _id_expr(m.item, schema[m.item], "item_id"),
        _time_expr(pl.col(m.time), schema[m.time], m).alias("timestamp"),
    ]
    if m.rating:
        r = pl.col(m.rating)
        exprs.append(
            (r.str.strip_chars() if schema[m.rating] == pl.String else r).cast(pl.Float64, strict=False).alias("rating")
        )
    return exprs


def _raw_exprs(m: ColumnMapping) -> list[pl.Expr]:
    """The mapped columns as read, named ``_raw_<canonical column>`` (to show an unparseable value)."""
    exprs = [
        pl.col(m.session).alias("_raw_session_key"),
        pl.col(m.item).alias("_raw_item_id"),
        pl.col(m.time).cast(pl.String).alias("_raw_timestamp"),
    ]
    if m.rating:
        exprs.append(pl.col(m.rating).cast(pl.String).alias("_raw_rating"))
    return exprs


# Canonical column -> its role in the column mapping.
_ROLES = {"session_key": "session", "item_id": "item", "timestamp": "time", "rating": "rating"}


def _raise_first_null(
    raw: _Raw,
    m: ColumnMapping,
    lf: pl.LazyFrame,
    exprs: list[pl.Expr],
    columns: list[str],
    wanted: dict[str, str],
    first_line: int,
) -> None:
    """Re-read with the raw values beside the parsed ones; raise about the first null, column by column."""
    full = lf.select(exprs + _raw_exprs(m)).with_row_index("row").collect()
    for c in columns:
        bad = full.filter(pl.col(c).is_null()).head(1)
        if bad.height:
            r = bad.row(0, named=True)
            rawv = r[f"_raw_{c}"]
            what = "empty value" if rawv is None or str(rawv).strip() == "" else "value cannot be parsed"
            if c == "timestamp":
                what += f" as time (time_unit={m.time_unit}" + (
                    f", format {m.time_format!r})" if m.time_format else ")"
                )
            column = wanted[_ROLES[c]]
            raise DataFormatError(
                f"{what} in column {column}",
                file=raw.name,
                line=r["row"] + first_line,
                column=column,
                value="" if rawv is None else rawv,
            )


def _narrow_id(s: pl.Series) -> pl.Series:
    """String ids that are all canonical integers (no leading zeros/sign/space) become Int64."""
    if s.dtype != pl.String:
        return s
    as_int = s.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and (as_int.cast(pl.String) == s).all():
        return as_int
    return s


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def read_events(
    path: str | Path, fmt: SourceFormat | str | None = None, columns: ColumnMapping | None = None
) -> tuple[pl.DataFrame, dict]:
    """Read a log into the canonical events table. Returns (events, info).

    info: ``{"reader", "format", "rows", "file", "member", "compression", "latin1"}``.
    Raises DataFormatError for anything structurally wrong, naming file/line/column/value.
    """
    raw = _open(path, load=False)
    if fmt is None:
        fmt = _detect_raw(raw)
        if fmt is None:
            detect_format(path)  # raises the full message
    fmt = SourceFormat(fmt)
    if fmt != SourceFormat.PARQUET:
        _check_text(raw)
    raw = _open(path, load=True)
    if fmt != SourceFormat.PARQUET and not _is_utf8(raw.head):
        _to_utf8(raw)
    if fmt in (SourceFormat.CSV, SourceFormat.PARQUET):
        out = _read_mapped(raw, fmt, columns)
    else:
        out = _read_delimited(raw, _spec_for(raw, fmt))
    info = {
        "reader": fmt.value,
        "format": fmt.value,
        "rows": out.height,
        "file": raw.name,
        "member": raw.member,
        "compression": raw.compression,
        "latin1": raw.latin1,
    }
    return out, info
