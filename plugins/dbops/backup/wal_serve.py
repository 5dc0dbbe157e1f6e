"""WAL from the store for a recovering server, segment by segment as it asks.

The task serves the archive over HTTP on a Unix socket in the scratch server's private socket directory;
``restore_command`` fetches one file with curl. So the server process needs neither Python nor the
store's credentials, and only the WAL recovery replays up to its target is downloaded. Each segment is
checked against the sha256 recorded when it was shipped and decompressed here; the next few are
fetched ahead while the server replays.

Answers: 200 with the segment; 404 for a name the archive does not hold (``restore_command`` exits 1:
the end of the archive); 500 when a segment cannot be used or fetched, and then ``restore_command``
exits 126, which PostgreSQL treats as a shell error and aborts recovery. The failure is kept for the
task to raise (:attr:`WalArchive.failure`), naming the segment.
"""

from __future__ import annotations

import shlex
import shutil
import socketserver
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING

from dbops.core.streams import ChecksumMismatch, is_encrypted, read_decompressed

if TYPE_CHECKING:
    from dbops.core.store import BackupStore

LOOKAHEAD = 4  # segments fetched ahead of the one recovery asks for


class SegmentUnusable(Exception):
    """A stored segment is missing or differs from what was shipped."""


def restore_command(curl: str, socket_path: Path, timeout: float) -> str:
    """The ``restore_command`` that asks the archive served on ``socket_path`` for ``%f`` into ``%p``."""
    fetch = (f"{shlex.quote(curl)} --silent --max-time {int(timeout)} --unix-socket {shlex.quote(str(socket_path))} "
             "--output %p --write-out '%%{http_code}' http://dbops/%f")
    return f'code=$({fetch}) && [ "$code" = 200 ] && exit 0; [ "$code" = 404 ] && exit 1; exit 126'


class WalArchive:
    """The stored segments ``{name: (partial, key, sha256)}``, fetched into ``cache`` on demand and ahead."""

    def __init__(self, store: BackupStore, segments: dict[str, tuple[bool, str, str]], cache: Path,
                 lookup: Callable[[str], tuple[bool, str, str] | None] | None = None, key: bytes | None = None) -> None:
        self.store = store
        self.key = key  # decrypts the segments shipped encrypted
        self.segments = segments
        self.lookup = lookup  # the catalog's current entry of a segment
        self.order = sorted(segments)
        self.cache = cache
        self.served_bytes = 0
        self.served: list[str] = []
        self.failure: Exception | None = None  # the first segment that could not be served
        self._pending: dict[str, Future[Path]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wal-fetch")

    def _fetch(self, name: str) -> Path:
        """The segment as listed when recovery started or, when that copy is gone or differs, as the catalog
        lists it now: shipping replaces a partial segment every run, and deletes it once the segment is
        finished; the newer copy holds the older one's WAL."""
        try:
            return self._fetch_entry(name, self.segments[name])
        except SegmentUnusable:
            current = self.lookup(name) if self.lookup else None
            if current is None or current == self.segments[name]:
                raise
            self.segments[name] = current
            return self._fetch_entry(name, current)

    def _fetch_entry(self, name: str, entry: tuple[bool, str, str]) -> Path:
        _, stored_key, sha256 = entry
        packed, out = self.cache / f".{name}.zst", self.cache / name
        try:
            self.store.get_file(stored_key, packed)
            encrypted = is_encrypted(packed)
            if encrypted and self.key is None:
                raise ChecksumMismatch("it was shipped encrypted and pitr.encryption_conn_id is not set")
            read_decompressed(packed, out, sha256, self.key if encrypted else None)
        except ChecksumMismatch as err:
            out.unlink(missing_ok=True)
            raise SegmentUnusable(f"WAL segment {name} ({stored_key}) cannot be used: {err}") from err
        except Exception:  # a store outage stays as it is (retried), unless the segment is gone
            if self.store.size(stored_key) is None:
                raise SegmentUnusable(f"WAL segment {name} ({stored_key}) is missing from the store") from None
            raise
        finally:
            packed.unlink(missing_ok=True)
        return out

    def _schedule(self, names: list[str]) -> None:
        for name in names:  # a segment asked for again (recovery may re-read one) is fetched again
            if name not in self._pending:
                self._pending[name] = self._pool.submit(self._fetch, name)

    def take(self, name: str) -> Path:
        """The decompressed segment ``name`` (fetched now unless fetched ahead); the next ones are scheduled."""
        with self._lock:
            position = self.order.index(name)
            self._schedule(self.order[position:position + 1 + LOOKAHEAD])
            future = self._pending.pop(name)
        path = future.result()
        self.served.append(name)
        return path

    def respond(self, name: str, handler: BaseHTTPRequestHandler) -> None:
        if name not in self.segments:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        try:
            path = self.take(name)
        except Exception as err:
            self.failure = self.failure or err
            handler.send_response(500)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        size = path.stat().st_size
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, handler.wfile, 1 << 20)
        path.unlink()
        self.served_bytes += size

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for name in list(self._pending):
            (self.cache / name).unlink(missing_ok=True)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    archive: WalArchive


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.server.archive.respond(self.path.lstrip("/"), self)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server API)
        """Requests are counted in the figures, not logged one by one."""


@contextmanager
def serving(archive: WalArchive, socket_path: Path, owner: str | None) -> Iterator[WalArchive]:
    """Serve ``archive`` on ``socket_path`` (owned by ``owner`` when given) until the block ends."""
    archive.cache.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    server = _Server(str(socket_path), _Handler)
    server.archive = archive
    socket_path.chmod(0o600)
    if owner:
        shutil.chown(socket_path, owner, owner)
    thread = threading.Thread(target=server.serve_forever, name="wal-serve", daemon=True)
    thread.start()
    try:
        yield archive
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        archive.close()
        socket_path.unlink(missing_ok=True)
