"""The transfer floor of a pull: the CPU that moving its blobs costs, with nothing else.

Every distinct blob of the images (configs and layers), fetched from the registry that
served the pull (over TLS where it speaks only that; never through the latency proxy,
which adds waiting, not work), three at a time as a pull does, each read in 1 MiB
pieces straight into a buffer and written to a file as ferryd writes a blob (its
`BlobFile`, see its docstring), then fsynced. No
parsing beyond the HTTP headers, no hashing, no inflating: what is left is the kernel's
work of receiving the bytes and writing them, which any client pays.

The figure is the CPU time of the fetching threads (`time.thread_time`, user + sys of
each). With the floor of verifying (`floor.py`) and the CPU the registry spends serving
them, it bounds a verifying pull from below: on N cores it cannot end sooner than
(floor + transfer + registry) / N, however well its stages overlap.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from common import BenchFailed, Built

from ferryd.blobfile import BlobFile
from support.registry import Registry

PIECE = 1 << 20
AT_ONCE = 3  # as a pull downloads (ferryd's and dockerd's default)


def transfer_pass(registry: Registry, images: Iterable[Built], into: Path) -> float:
    """CPU seconds of fetching every distinct blob of `images` from `registry` into
    files under `into` (removed again), `AT_ONCE` at a time."""
    queue = list({digest: image.name for image in images for digest in image.blobs}.items())
    lock = threading.Lock()
    spent: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        started = time.thread_time()
        try:
            with _Connection(registry) as connection:
                while True:
                    with lock:
                        if not queue or errors:
                            break
                        digest, name = queue.pop()
                    connection.fetch(f"/v2/{name}/blobs/{digest}", into / digest[7:])
        except BaseException as exc:  # reported by the caller, in its thread
            errors.append(exc)
        finally:
            spent.append(time.thread_time() - started)

    into.mkdir(parents=True, exist_ok=True)
    try:
        threads = [threading.Thread(target=worker) for _ in range(AT_ONCE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        shutil.rmtree(into, ignore_errors=True)
    if errors:
        raise BenchFailed(f"transfer floor: {errors[0]!r}")
    return sum(spent)


class _Connection:
    """One kept HTTP(S) connection to the registry."""

    def __init__(self, registry: Registry) -> None:
        url = urlsplit(registry.url)
        host, port = url.hostname or "127.0.0.1", url.port
        self._http: http.client.HTTPConnection
        context = registry.ssl_context()
        if isinstance(context, ssl.SSLContext):
            self._http = http.client.HTTPSConnection(host, port, context=context)
        else:
            self._http = http.client.HTTPConnection(host, port)
        self._buffer = memoryview(bytearray(PIECE))

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def fetch(self, path: str, to: Path) -> None:
        self._http.request("GET", path)
        response = self._http.getresponse()
        if response.status != 200:
            raise BenchFailed(f"GET {path}: {response.status} {response.reason}")
        file = BlobFile(to)
        try:
            while got := response.readinto(self._buffer):
                file.write(self._buffer[:got])
            file.finish()
        finally:
            file.close()
