"""Run ``gcp-storage-emulator`` with byte-exact parsing of multipart uploads.

The emulator parses ``multipart/related`` uploads with :mod:`email`, which
treats a carriage return at the very end of the uploaded bytes as part of the
line break before the closing boundary and drops it.  gcsfs uploads every
object under 50 MB that way, with bare ``\\n`` line breaks, so a Zarr chunk
whose compressed bytes end in ``\\r`` comes back one byte short and fails to
decompress (seen here: 5 of 331 chunks of a small store).  Real GCS keeps the
bytes.  This launcher replaces only that parsing step with one that cuts the
body exactly at the line break used by the request, listens with a backlog that
concurrent clients fit in (:class:`_HTTPServer`), then runs the emulator's own
command line unchanged::

    python tests/_gcs_emulator.py start --host 127.0.0.1 --port 9023 --in-memory

On disk (``-d DIR start ...`` without ``--in-memory``) the emulator keeps every object in a
file under ``DIR/.cloudstorage`` and the list of objects in one ``.meta`` file it rewrites
on every change; this launcher writes each of those files atomically (a temporary file,
then a rename), as GCS makes an object visible only once it is whole, so the emulator
can be killed at any moment and started again on the same folder (:class:`OnDisk`).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gcp_storage_emulator import server
from gcp_storage_emulator import storage as _storage


def _split_related(raw: bytes, boundary: bytes) -> list[tuple[dict, bytes]]:
    delim = b"--" + boundary
    if not raw.startswith(delim):
        raise ValueError("multipart body does not start with its boundary")
    eol = b"\r\n" if raw[len(delim):len(delim) + 2] == b"\r\n" else b"\n"
    parts = []
    for chunk in raw.split(eol + delim)[:-1] if raw.count(eol + delim) else []:
        chunk = chunk[len(delim):] if chunk.startswith(delim) else chunk
        chunk = chunk[len(eol):] if chunk.startswith(eol) else chunk
        head, _, body = chunk.partition(eol + eol)
        headers = {}
        for line in head.split(eol):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append((headers, body))
    return parts


_original = server._read_data


def _read_data(request_handler, query):
    ctype = request_handler.headers.get("Content-Type") or ""
    if not ctype.startswith("multipart/related"):
        return _original(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    (meta_h, meta), (content_h, content) = _split_related(raw, m.group(1).encode())[:2]
    return {"meta": json.loads(meta), "content": content,
            "content-type": content_h.get("content-type", "application/octet-stream")}


server._read_data = _read_data


def _write_bytes_atomically(self, rel: str, content: bytes) -> None:
    if self._use_memory:
        return _original_write_bytes(self, rel, content)
    path = self._disk_path(self._norm(rel))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


_original_write_bytes = _storage._FileStore.write_bytes
_storage._FileStore.write_bytes = _write_bytes_atomically


class _HTTPServer(http.server.HTTPServer):
    """The emulator's single-threaded server with a listen backlog a client pool fits in.

    ``http.server.HTTPServer`` listens with a backlog of 5; gcsfs opens many connections
    at once (``cat``/``pipe`` of many objects, a dask worker's concurrent chunk writes),
    and connections beyond the backlog have their SYN dropped and retried by the kernel
    a second or more later: measured here, 100 objects uploaded in one batch took 111 s
    against 0.4 s one by one.  Requests are still served one at a time (the emulator's
    storage is not thread-safe), each in milliseconds.
    """

    request_queue_size = 1024


def _run_api(self) -> None:
    self._httpd = _HTTPServer((self._host, self._port),
                              functools.partial(server.RequestHandler, self._storage))
    self.is_running.set()
    self._httpd.serve_forever()


server.APIThread.run = _run_api


class OnDisk:
    """This launcher's emulator on 127.0.0.1 keeping its objects in ``data_dir``, with
    bucket ``bucket``: :meth:`start`, :meth:`kill` (SIGKILL: the store gone at once, as a
    crashed or unreachable server) and :meth:`start` again on the same objects and port."""

    def __init__(self, data_dir: Path, port: int | None = None, bucket: str = "casm-test"):
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.data_dir, self.port, self.bucket = Path(data_dir), port, bucket
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "-d", str(self.data_dir), "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--default-bucket", self.bucket, "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the GCS emulator exited with code {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the GCS emulator did not listen on 127.0.0.1:{self.port}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def objects(self) -> list[str]:
        """Names (``bucket/path``) of the objects the emulator holds, read from its disk."""
        meta = self.data_dir / ".cloudstorage" / ".meta"
        if not meta.is_file():
            return []
        objects = json.loads(meta.read_text()).get("objects", {})
        return sorted(f"{b}/{name}" for b, names in objects.items() for name in names)


if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main(sys.argv[1:]))
