"""Downloads that either produce the verified file or leave nothing behind."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mamlrun.errors import MamlrunError

CHUNK = 1 << 20


def sha256sum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None, timeout: float = 60, progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest``, verifying its length and SHA-256.

    The bytes go to ``<dest>.part`` and are renamed into place only once complete and verified; on
    any failure (HTTP error, truncated transfer, checksum mismatch) the partial file is removed
    and a :class:`MamlrunError` says what happened.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest, written = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            with (
                part.open("wb") as f,
                tqdm(
                    total=total or None,
                    unit="B",
                    unit_scale=True,
                    disable=not progress,
                    desc=f"download {dest.name}",
                    leave=False,
                ) as bar,
            ):
                while block := resp.read(CHUNK):
                    f.write(block)
                    digest.update(block)
                    written += len(block)
                    bar.update(len(block))
        if total and written != total:
            raise MamlrunError(f"download of {url} was truncated: {written} of {total} bytes")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise MamlrunError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest.hexdigest()} "
                "(the server may have sent an error page instead of the file)"
            )
        os.replace(part, dest)
        return dest
    except urllib.error.HTTPError as exc:
        raise MamlrunError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, http.client.IncompleteRead):
            reason = f"truncated after {written + len(exc.partial)} bytes"
        raise MamlrunError(f"download of {url} failed: {reason}") from None
    finally:
        part.unlink(missing_ok=True)
