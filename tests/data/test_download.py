"""The downloader against a real HTTP server on 127.0.0.1 serving a real Omniglot archive."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from mamlrun.data import omniglot
from mamlrun.data.download import download
from mamlrun.errors import MamlrunError
from tests.data.conftest import OMNIGLOT


class Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/error/"):
            self.send_error(503, "Service Unavailable")
            return
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        if self.path.startswith("/html/"):
            body = b"<html><body>Please sign in to download this file.</body></html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # /truncated/: promise the whole file, send half of it, hang up.
        self.wfile.write(body[: len(body) // 2] if self.path.startswith("/truncated/") else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    archive = OMNIGLOT / "images_background_small1.zip"
    if not archive.exists():
        pytest.skip(f"the real Omniglot archives are not at {OMNIGLOT}")
    Handler.files = {"images_background_small1.zip": archive.read_bytes()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", archive
    httpd.shutdown()
    httpd.server_close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_success_writes_the_verified_file(server, tmp_path):
    url, archive = server
    dest = download(f"{url}/ok/{archive.name}", tmp_path / archive.name, sha(archive), progress=False)
    assert dest.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("html", "checksum mismatch"),
        ("truncated", "truncated"),
        ("error", "HTTP 503"),
        ("ok/missing.zip", "HTTP 404"),
    ],
)
def test_failures_leave_no_file_behind(server, tmp_path, path, message):
    url, archive = server
    target = f"{url}/{path}" if path.endswith(".zip") else f"{url}/{path}/{archive.name}"
    with pytest.raises(MamlrunError, match=message):
        download(target, tmp_path / archive.name, sha(archive), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_of_a_complete_file(server, tmp_path):
    url, archive = server
    with pytest.raises(MamlrunError, match=r"expected sha256 0{64}"):
        download(f"{url}/ok/{archive.name}", tmp_path / "x.zip", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_omniglot_download_fetches_verifies_and_loads(server, tmp_path, monkeypatch):
    url, archive = server
    monkeypatch.setattr(omniglot, "OFFICIAL", {archive.name: sha(archive)})
    data = omniglot.Omniglot(tmp_path / "omni", 5, 1, 1, split=[0.6, 0.2, 0.2], download=True, url=f"{url}/ok")
    assert (tmp_path / "omni" / archive.name).read_bytes() == archive.read_bytes()
    assert sum(a.shape[0] for a in data.arrays.values()) == 136
    # A bad mirror: nothing is left in the data folder, and the error says why.
    monkeypatch.setattr(omniglot, "OFFICIAL", {archive.name: "f" * 64})
    with pytest.raises(MamlrunError, match="checksum mismatch"):
        omniglot.Omniglot(tmp_path / "again", 5, 1, 1, download=True, url=f"{url}/ok")
    assert not any((tmp_path / "again").iterdir())
