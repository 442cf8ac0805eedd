"""Fetch the default source (MovieLens-1M from GroupLens), verified by md5 and cached so it downloads once.

Resolution order (`resolve_ml1m`):

1. ``$GRU4REC_ML1M_PATH`` names a local copy (ml-1m.zip, ratings.dat or ratings.dat.gz): used as is.
2. The cached ``<data_dir>/ml-1m.zip`` whose md5 matches the digest stored beside it (``ml-1m.zip.md5``).
3. Download ``ml-1m.zip.md5`` and ``ml-1m.zip`` from GroupLens, verify, and move into the cache
   (temp file + rename, so an interrupted or bad download never leaves a file in the cache).

Anything that fails (offline, HTTP error, checksum mismatch) raises `SourceUnavailableError` that says how
to use a local copy instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from gru4rec.errors import SourceUnavailableError
from gru4rec.io import atomic_path, file_digest

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ENV_ML1M_PATH = "GRU4REC_ML1M_PATH"
DEFAULT_TIMEOUT_S = 60.0

LOCAL_COPY_HINT = (
    "To use a local copy instead, pass it with --source PATH (any supported format), or set the environment "
    f"variable {ENV_ML1M_PATH} to a local ml-1m.zip, ratings.dat or ratings.dat.gz"
)


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    return file_digest(path, "md5", chunk)


def parse_md5(text: str) -> str:
    """The hex digest in an md5 file (``<hex>  name``, ``MD5 (name) = <hex>`` or a bare digest)."""
    m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not m:
        raise ValueError(f"no md5 digest found in {text[:200]!r}")
    return m.group(1).lower()


def _fetch(url: str, timeout: float) -> urllib.request.addinfourl:
    req = urllib.request.Request(url, headers={"User-Agent": "gru4rec-pipeline"})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https URLs from config)


def _unavailable(what: str, url: str, err: BaseException) -> SourceUnavailableError:
    # A timeout, a refused connection or a server error may pass (retried); a 404 or 403 will not.
    permanent = isinstance(err, urllib.error.HTTPError) and err.code < 500
    return SourceUnavailableError(f"{what} {url} ({err}). {LOCAL_COPY_HINT}", transient=not permanent)


def download_ml1m(
    data_dir: str | os.PathLike,
    url: str = ML1M_URL,
    md5_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Return the path of a verified ml-1m.zip in `data_dir`, downloading it if not cached."""
    data_dir = Path(data_dir).expanduser()
    md5_url = md5_url or url + ".md5"
    name = url.rstrip("/").rsplit("/", 1)[-1] or "ml-1m.zip"
    dest = data_dir / name
    digest_file = data_dir / (name + ".md5")
    if _is_cached(dest, digest_file):
        return dest
    want = _fetch_md5(md5_url, timeout)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SourceUnavailableError(f"cannot create the data directory {data_dir} ({e}). {LOCAL_COPY_HINT}") from None
    _download_verified(url, dest, want, md5_url, timeout)
    # The digest is stored last: a cached file counts only once both are there and agree.
    with atomic_path(digest_file) as tmp:
        tmp.write_text(f"{want}  {name}\n", encoding="utf-8")
    return dest


def _is_cached(dest: Path, digest_file: Path) -> bool:
    """True when ``dest`` and its stored digest are both there and agree (else it is downloaded again)."""
    if not (dest.is_file() and digest_file.is_file()):
        return False
    try:
        want = parse_md5(digest_file.read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        return False
    return md5_file(dest) == want


def _fetch_md5(md5_url: str, timeout: float) -> str:
    """The published digest; it is fetched first so a bad download is caught before it reaches the cache."""
    try:
        with _fetch(md5_url, timeout) as r:
            md5_text = r.read(1 << 16).decode("utf-8", errors="replace")
        return parse_md5(md5_text)
    except ValueError as e:
        raise _unavailable("the checksum file is not an md5 file:", md5_url, e) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise _unavailable("cannot download", md5_url, e) from None


def _download_verified(url: str, dest: Path, want: str, md5_url: str, timeout: float) -> None:
    """Download ``url`` to ``dest`` (temp file + rename), hashing while writing; a mismatch keeps nothing."""
    try:
        with atomic_path(dest) as tmp:
            h = hashlib.md5()
            with _fetch(url, timeout) as r, open(tmp, "wb") as f:
                while block := r.read(1 << 20):
                    h.update(block)
                    f.write(block)
            got = h.hexdigest()
            if got != want:
                raise SourceUnavailableError(
                    f"checksum mismatch for {url}: md5 {got}, expected {want} (from {md5_url}); the download was "
                    f"discarded. {LOCAL_COPY_HINT}"
                )
    except SourceUnavailableError:
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise _unavailable("cannot download", url, e) from None


def resolve_ml1m(
    data_dir: str | os.PathLike,
    url: str = ML1M_URL,
    md5_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """The default source: $GRU4REC_ML1M_PATH if set, else the cached/downloaded GroupLens ml-1m.zip."""
    env = os.environ.get(ENV_ML1M_PATH)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise SourceUnavailableError(f"{ENV_ML1M_PATH}={env} does not name an existing file. {LOCAL_COPY_HINT}")
        return p
    return download_ml1m(data_dir, url=url, md5_url=md5_url, timeout=timeout)


__all__ = [
    "ENV_ML1M_PATH",
    "LOCAL_COPY_HINT",
    "ML1M_URL",
    "download_ml1m",
    "md5_file",
    "parse_md5",
    "resolve_ml1m",
]
