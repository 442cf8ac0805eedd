"""Download of the default source against a local HTTP server on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gru4rec.data.download import ENV_ML1M_PATH, download_ml1m, parse_md5, resolve_ml1m
from gru4rec.data.readers import read_events
from gru4rec.errors import SourceUnavailableError

RATINGS = b"1::1193::5::978300760\n1::661::3::978302109\n2::914::4::978301968\n"


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", RATINGS)
        zf.writestr("ml-1m/README", "synthetic")
    return buf.getvalue()


ZIP = _zip_bytes()


@pytest.fixture
def server():
    """Serves /ml-1m.zip and /ml-1m.zip.md5 (GroupLens style: 'MD5 (ml-1m.zip) = <hex>'); counts requests."""
    state = {"zip": ZIP, "md5": f"MD5 (ml-1m.zip) = {hashlib.md5(ZIP).hexdigest()}\n".encode(), "hits": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["hits"].append(self.path)
            body = {"/ml-1m.zip": state["zip"], "/ml-1m.zip.md5": state["md5"]}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/ml-1m.zip"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_parse_md5_variants():
    h = "0123456789abcdef0123456789ABCDEF"
    assert parse_md5(f"MD5 (ml-1m.zip) = {h}\n") == h.lower()
    assert parse_md5(f"{h}  ml-1m.zip") == h.lower()
    with pytest.raises(ValueError):
        parse_md5("<html>not found</html>")


def test_download_verifies_and_caches(tmp_path, server):
    p = download_ml1m(tmp_path / "cache", url=server["url"])
    assert p.read_bytes() == ZIP
    assert sorted(server["hits"]) == ["/ml-1m.zip", "/ml-1m.zip.md5"]
    df, info = read_events(p)
    assert df.height == 3 and info["member"] == "ml-1m/ratings.dat"
    # cache hit: no second request
    assert download_ml1m(tmp_path / "cache", url=server["url"]) == p
    assert len(server["hits"]) == 2
    # a corrupted cached file is re-downloaded
    p.write_bytes(b"garbage")
    assert download_ml1m(tmp_path / "cache", url=server["url"]).read_bytes() == ZIP
    assert len(server["hits"]) == 4


def test_bad_md5_leaves_nothing_in_cache(tmp_path, server):
    server["md5"] = b"MD5 (ml-1m.zip) = 00000000000000000000000000000000\n"
    cache = tmp_path / "cache"
    with pytest.raises(SourceUnavailableError) as e:
        download_ml1m(cache, url=server["url"])
    msg = str(e.value)
    assert "checksum mismatch" in msg and "--source" in msg and ENV_ML1M_PATH in msg
    assert not cache.exists() or list(cache.iterdir()) == []


def test_md5_file_that_is_not_an_md5(tmp_path, server):
    server["md5"] = b"<html>oops</html>"
    with pytest.raises(SourceUnavailableError, match="--source"):
        download_ml1m(tmp_path, url=server["url"])


def test_unreachable_gives_clear_error(tmp_path):
    with socket.socket() as s:  # a port on loopback that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceUnavailableError) as e:
        download_ml1m(tmp_path, url=f"http://127.0.0.1:{port}/ml-1m.zip", timeout=5)
    msg = str(e.value)
    assert "cannot download" in msg and "--source PATH" in msg and ENV_ML1M_PATH in msg
    assert list(tmp_path.iterdir()) == []


def test_http_404(tmp_path, server):
    with pytest.raises(SourceUnavailableError, match="404"):
        download_ml1m(tmp_path, url=server["url"].replace("ml-1m.zip", "missing.zip"))


def test_env_var_wins(tmp_path, monkeypatch, server):
    local = tmp_path / "ratings.dat"
    local.write_bytes(RATINGS)
    monkeypatch.setenv(ENV_ML1M_PATH, str(local))
    assert resolve_ml1m(tmp_path / "cache", url=server["url"]) == local
    assert server["hits"] == []
    monkeypatch.setenv(ENV_ML1M_PATH, str(tmp_path / "nope.zip"))
    with pytest.raises(SourceUnavailableError, match=ENV_ML1M_PATH):
        resolve_ml1m(tmp_path / "cache", url=server["url"])


def test_network_failures_are_transient_and_a_404_is_not(tmp_path, server):
    from gru4rec.errors import is_transient

    with socket.socket() as s:  # refused connection
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceUnavailableError) as refused:
        download_ml1m(tmp_path / "a", url=f"http://127.0.0.1:{port}/ml-1m.zip", timeout=5)
    assert is_transient(refused.value)

    with socket.socket() as silent:  # accepts the connection, never answers: a timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ml-1m.zip"
        with pytest.raises(SourceUnavailableError, match="timed out") as timed_out:
            download_ml1m(tmp_path / "b", url=url, md5_url=url + ".md5", timeout=0.5)
    assert is_transient(timed_out.value)

    with pytest.raises(SourceUnavailableError, match="404") as missing:
        download_ml1m(tmp_path / "c", url=server["url"].replace("ml-1m.zip", "missing.zip"))
    assert not is_transient(missing.value)


def test_download_task_retries_a_server_error(tmp_path, server, prefect_harness, monkeypatch):
    """A 503 on the first request is retried by the Prefect task and the second attempt succeeds."""
    import urllib.error

    from prefect import flow

    import gru4rec.data.download as download
    import gru4rec.data.ingest as ingest
    from flows.training import fingerprint_task
    from gru4rec.data.config import IngestConfig

    real_fetch, failures = download._fetch, {"left": 1}

    def flaky_fetch(url, timeout):
        if failures["left"]:
            failures["left"] -= 1
            raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, None)
        return real_fetch(url, timeout)

    monkeypatch.setattr(download, "_fetch", flaky_fetch)
    monkeypatch.setattr(ingest, "resolve_ml1m", lambda data_dir: download.resolve_ml1m(data_dir, url=server["url"]))
    monkeypatch.delenv(ENV_ML1M_PATH, raising=False)

    @flow
    def fingerprint_once() -> str:
        return fingerprint_task.with_options(retry_delay_seconds=0)(IngestConfig(data_dir=str(tmp_path)))

    assert len(fingerprint_once()) == 64
    assert failures["left"] == 0 and (tmp_path / "ml-1m.zip").read_bytes() == server["zip"]
