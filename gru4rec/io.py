"""Atomic file writes and content hashing.

Every output is written to a temporary path beside its destination and renamed into place, so a
crash never leaves a half-written file for the next step to read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    # os.umask can only be read by setting it (not thread-safe); Linux shows it in /proc.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def publish_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the mode a plain open()/mkdir() would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in dest's directory; on success rename it onto dest, else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish_mode(tmp_path)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return Path(dest)


def write_parquet_atomic(
    df, dest: str | os.PathLike, compression: str = "zstd", compression_level: int | None = None
) -> Path:
    """Write a Polars DataFrame to Parquet atomically, with settings that give byte-identical output.

    The defaults (zstd, Polars' default level) are for outputs that are kept; intermediates that are
    read back at once may use a faster codec (e.g. ``compression="lz4"``). Any fixed setting is
    deterministic: the same frame gives the same bytes.
    """
    with atomic_path(dest) as tmp:
        df.write_parquet(tmp, compression=compression, compression_level=compression_level, statistics=True)
    return Path(dest)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    return file_digest(path, "sha256", chunk)


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (keys sorted), e.g. a config."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
