"""`ferryd save` and `ferryd load`: image archives between the daemon and files or pipes.

`save` writes the daemon's archive (docker's `manifest.json` and an OCI layout in one
tar) to a file, to stdout, or unpacked as an OCI layout directory (`--format oci-dir`).
`load` sends a file or stdin to the daemon while it reads the daemon's answer, so the
progress it reports shows as the upload goes.

Stdlib only, as the rest of the client: it starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from ferryd.cli.client import (
    PIECE,
    Client,
    CutAnswer,
    DaemonError,
    connection_failed,
    messages,
    open_socket,
    pieces,
    refusal,
    socket_path,
)
from ferryd.cli.display import StreamError, finished, show

_OCI_FILES = ("oci-layout", "index.json")
_LOADED = ("Loaded image: ", "Loaded image ID: ")


def add_commands(commands: Any) -> None:
    """Add `save` and `load` to the `ferryd` parser's subcommands."""
    save = commands.add_parser(
        "save",
        help="write images to a tar archive (docker load and skopeo read it)",
        description="Save images as one tar archive: docker's manifest.json and an OCI "
        "image layout, with the layers and manifests as the registry served them.",
    )
    save.add_argument("images", nargs="+", metavar="REF", help="image, repository or ID")
    save.add_argument("-o", "--output", help="file (or directory, with --format oci-dir)")
    save.add_argument(
        "--format",
        choices=["tar", "oci-dir"],
        default="tar",
        help="tar (default), or oci-dir: an OCI image layout directory",
    )
    save.add_argument("--platform", help="os/arch[/variant]: refuse images of another")
    save.set_defaults(handler=_save)

    load = commands.add_parser(
        "load",
        help="load images from a tar archive (docker save, skopeo, OCI layout)",
        description="Load images from an archive: docker save's (any version), skopeo's "
        "docker-archive or oci-archive; plain, or compressed (gzip, zstd, xz, bzip2).",
    )
    load.add_argument("-i", "--input", help="the archive (default: stdin)")
    load.add_argument("-q", "--quiet", action="store_true", help="no progress")
    load.add_argument("--platform", help="os/arch[/variant]: load only images of it")
    load.set_defaults(handler=_load)


# -- save ------------------------------------------------------------------------------


def _save(args: argparse.Namespace) -> int:
    if args.format == "oci-dir" and not args.output:
        raise StreamError("--format oci-dir needs -o DIR: the directory to write")
    if not args.output and sys.stdout.isatty():
        raise StreamError(
            "refusing to write an archive to a terminal: use -o FILE or redirect the output"
        )
    if args.format == "tar" and args.output and os.path.isdir(args.output):
        # As `docker save -o DIR` fails: the archive is one file, and it is not put in DIR.
        raise StreamError(f"cannot write {args.output}: it is a directory (-o names the file)")
    query: list[tuple[str, str]] = [("names", name) for name in args.images]
    if args.platform:
        query.append(("platform", args.platform))
    response = Client(args.host).request("GET", f"/images/get?{urlencode(query)}")
    with response:
        pieces = _pieces(response)
        try:
            if args.format == "oci-dir":
                _unpack_layout(pieces, Path(args.output))
            elif args.output:
                _write_file(pieces, Path(args.output))
            else:
                for piece in pieces:
                    sys.stdout.buffer.write(piece)
                sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            # Not exc.filename: that is of the temp file beside the output, which the
            # user never named.
            where = args.output or "stdout"
            raise StreamError(f"cannot write {where}: {exc.strerror or exc}") from None
    return 0


def _pieces(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The archive as it arrives; a transfer the daemon cut (it found a stored blob
    broken, or it stopped) is an error, never a short archive taken for a whole one."""
    meter = _Meter()
    try:
        for piece in pieces(response, "GET /images/get"):
            meter.add(len(piece))
            yield piece
    except CutAnswer:
        meter.done()
        raise DaemonError(
            "the daemon's archive ended early: the transfer was cut (the daemon's log says "
            "why: image.save_failed)"
        ) from None
    meter.done()


class _Meter:
    """Bytes received, on stderr when it is a terminal."""

    def __init__(self) -> None:
        self._on = sys.stderr.isatty()
        self._bytes = 0
        self._shown = 0.0

    def add(self, count: int) -> None:
        self._bytes += count
        now = time.monotonic()
        if self._on and now - self._shown >= 0.1:
            self._shown = now
            sys.stderr.write(f"\rSaving {self._bytes / 1e6:10.1f} MB")
            sys.stderr.flush()

    def done(self) -> None:
        if self._on:
            sys.stderr.write(f"\rSaved {self._bytes / 1e6:10.1f} MB\n")
            sys.stderr.flush()


def _write_file(pieces: Iterator[bytes], target: Path) -> None:
    """Into a temp file beside `target`, renamed over it once the archive is whole."""
    directory = target.parent if str(target.parent) else Path(".")
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            for piece in pieces:
                file.write(piece)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _unpack_layout(pieces: Iterator[bytes], target: Path) -> None:
    """The OCI layout part of the archive (`oci-layout`, `index.json`, `blobs/`) as a
    directory, which `skopeo copy oci:DIR …` reads; written beside it, then renamed."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StreamError(f"{target} exists and is not an empty directory")
    parent = target.parent if str(target.parent) else Path(".")
    temp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Reader(pieces), PIECE), mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                parts = name.split("/")
                wanted = name in _OCI_FILES or parts[0] == "blobs"
                if not wanted or name.startswith("/") or ".." in parts:
                    continue
                if member.isdir():
                    (temp / name).mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    source = archive.extractfile(member)
                    assert source is not None
                    (temp / name).parent.mkdir(parents=True, exist_ok=True)
                    with source, (temp / name).open("wb") as out:
                        shutil.copyfileobj(source, out, PIECE)
        if target.exists():
            target.rmdir()
        os.replace(temp, target)
    except tarfile.TarError as exc:
        raise StreamError(f"the daemon's archive could not be read: {exc}") from None
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


class _Reader(io.RawIOBase):
    """A file view of an iterator of bytes, for tarfile's stream mode."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        count = min(len(buffer), len(self._rest))
        buffer[:count] = self._rest[:count]
        self._rest = self._rest[count:]
        return count


# -- load ------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> int:
    if args.input:
        try:
            source: IO[bytes] = open(args.input, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StreamError(f"open {args.input}: {exc.strerror}") from None
    else:
        if sys.stdin.isatty():
            raise StreamError("requested load from stdin, but stdin is empty (use -i FILE)")
        source = sys.stdin.buffer
    quiet = args.quiet or not sys.stdout.isatty()
    query = {"quiet": "1" if quiet else "0"}
    if args.platform:
        query["platform"] = args.platform
    with source:
        messages = _upload(socket_path(args.host), f"/images/load?{urlencode(query)}", source)
        show(finished(_statuses(messages), _load_done, _CUT))
    return 0


_CUT = (
    "the load did not finish: the daemon's answer ended before it said what it loaded (the "
    "connection was cut, or the daemon stopped); `ferryd images` shows what is there"
)


def _statuses(messages: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """dockerd says what it loaded in `{"stream": …}` lines: shown as statuses."""
    for message in messages:
        if "stream" in message:
            yield {"status": str(message["stream"]).rstrip("\n")}
        else:
            yield message


def _load_done(message: dict[str, Any]) -> bool:
    """A load's answer ends with `Loaded image: NAME` (or `Loaded image ID: ID`)."""
    return str(message.get("status", "")).startswith(_LOADED)


def _upload(path: str, target: str, source: IO[bytes]) -> Iterator[dict[str, Any]]:
    """POST `source` as the body while the answer is read: a thread sends, this one
    reads (http.client would send it all first, and show no progress until then)."""
    sock = open_socket(path)
    size = _size_of(source)
    framing = f"Content-Length: {size}" if size is not None else "Transfer-Encoding: chunked"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-tar\r\n"
        f"{framing}\r\nConnection: close\r\n\r\n"
    )
    failed: list[OSError] = []

    def send() -> None:
        try:
            sock.sendall(head.encode())
            while piece := _read(source, failed):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if size is None else piece)
            if failed:
                sock.shutdown(socket.SHUT_WR)  # the daemon sees the archive cut short
            elif size is None:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the daemon answered before taking it all: its answer says why

    sender = threading.Thread(target=send, name="ferryd-upload", daemon=True)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock, method="POST")
        try:
            response.begin()
        except (OSError, http.client.HTTPException) as exc:
            raise connection_failed(exc) from None
        if response.status >= 400:
            raise refusal(response)
        yield from messages(response, "POST /images/load")
        if failed:
            raise StreamError(f"reading the archive failed: {failed[0].strerror or failed[0]}")
    finally:
        # Stop the sender before the caller closes `source` under it: a shutdown wakes a
        # blocked sendall. A read of a pipe that never ends cannot be woken; then the
        # thread is left (a daemon thread) and `_read` takes the closed file quietly.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=1)
        sock.close()


def _read(source: IO[bytes], failed: list[OSError]) -> bytes:
    try:
        return source.read(PIECE)
    except OSError as exc:
        failed.append(exc)
        return b""
    except ValueError:  # closed under it: the answer came and the command is done
        return b""


def _size_of(source: IO[bytes]) -> int | None:
    """The length of a regular file (sent with Content-Length); None for a pipe."""
    try:
        status = os.fstat(source.fileno())
        position = source.tell() if source.seekable() else 0
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return status.st_size - position
