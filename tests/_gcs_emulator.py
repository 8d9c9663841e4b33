"""Run ``gcp-storage-emulator`` with byte-exact parsing of multipart uploads.

The emulator parses ``multipart/related`` uploads with :mod:`email`, which
treats a carriage return at the very end of the uploaded bytes as part of the
line break before the closing boundary and drops it.  gcsfs uploads every
object under 50 MB that way, with bare ``\\n`` line breaks, so a Zarr chunk
whose compressed bytes end in ``\\r`` comes back one byte short and fails to
decompress (seen here: 5 of 331 chunks of a small store).  Real GCS keeps the
bytes.  This launcher replaces only that parsing step with one that cuts the
body exactly at the line break used by the request, then runs the emulator's
own command line unchanged::

    python tests/_gcs_emulator.py start --host 127.0.0.1 --port 9023 --in-memory
"""

from __future__ import annotations

import json
import re
import sys

from gcp_storage_emulator import server


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

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main(sys.argv[1:]))
