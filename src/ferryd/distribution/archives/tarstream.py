"""Tar as a stream: the headers of the archives ferryd writes, and a parser for the ones
it reads that takes bytes as they arrive.

The parser is pushed to (`feed`), never pulls: the request body arrives in pieces, and
no entry is ever held whole. It understands what docker (Go's archive/tar), skopeo and
GNU tar write: ustar names with their prefix, pax records (`path`, `linkpath`, `size`)
and GNU long names, base-256 sizes. What an entry *means* is its handler's business;
the parser only bounds what it buffers itself (headers, pax records, long names).

Not the standard library's tarfile, which would be simpler: it pulls from a file
object (a request body is pushed to the event loop), and it reads a pax header or a GNU
long name whole, at whatever size its header claims (`TarInfo._proc_pax`), so a
hostile archive of a few bytes could make it read gigabytes into memory.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from typing import Protocol

from ferryd.errors import ArchiveError
from ferryd.untrusted import MAX_DIGITS, decimal

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
_ZERO_BLOCK = bytes(BLOCK)

# What the parser buffers for one entry's metadata: a pax header or a GNU long name.
MAX_METADATA = 1 << 20
MAX_NAME = 4096
_OCTAL = re.compile(rb"[0-7]+")

REGULAR = "file"
DIRECTORY = "directory"
SYMLINK = "symlink"
HARDLINK = "hard link"
_KINDS = {
    b"0": REGULAR,
    b"\0": REGULAR,
    b"7": REGULAR,  # contiguous file: a regular file to everyone but one old Unix
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": "character device",
    b"4": "block device",
    b"5": DIRECTORY,
    b"6": "FIFO",
    b"S": "sparse file",
    b"D": "GNU dump directory",
    b"M": "GNU multi-volume continuation",
    b"V": "GNU volume label",
}
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_METADATA = (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK)


def file_header(name: str, size: int) -> bytes:
    """The header of a regular file (mode 0644, owned by root, dated 1970, as docker's
    archives are); a pax record carries what ustar cannot (sizes from 8 GiB)."""
    return _header(name, size, tarfile.REGTYPE, 0o644)


def directory_header(name: str) -> bytes:
    return _header(name.rstrip("/") + "/", 0, tarfile.DIRTYPE, 0o755)


def padding(size: int) -> bytes:
    """What follows `size` bytes of data to fill their last block."""
    return bytes(-size % BLOCK)


def _header(name: str, size: int, kind: bytes, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Entry:
    name: str  # as the archive writes it: not checked, not cleaned
    kind: str  # REGULAR, DIRECTORY, SYMLINK, HARDLINK, or what else it is
    size: int
    linkname: str


class EntryHandler(Protocol):
    def begin(self, entry: Entry) -> None: ...
    def data(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...


_HEADER, _DATA, _PADDING = range(3)


class TarReader:
    """Parse a tar stream fed in pieces, calling `handler` for each entry: `begin`, then
    `data` for its bytes in order, then `end`. Stops at the end-of-archive marker (two
    zero blocks); what follows it is ignored, as Go's archive/tar ignores it."""

    def __init__(self, handler: EntryHandler) -> None:
        self._handler = handler
        self._state = _HEADER
        self._buffer = bytearray()  # a header being gathered
        self._remaining = 0  # bytes of the current entry's data still to come
        self._padding = 0
        self._metadata: bytearray | None = None  # the data of a pax header or long name
        self._metadata_kind = b""
        self._pending: dict[str, str] = {}  # pax / GNU overrides for the next entry
        self._zero_blocks = 0
        self._entry: Entry | None = None
        self._headers = 0
        self.offset = 0  # bytes of the tar stream consumed
        self.ended = False  # the end-of-archive marker was read

    @property
    def entry(self) -> Entry | None:
        """The entry whose data is being read, if any."""
        return self._entry if self._state == _DATA else None

    @property
    def received(self) -> int:
        """Bytes of the current entry's data read so far."""
        return self._entry.size - self._remaining if self._entry is not None else 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.ended:
            if self._state == _HEADER:
                take = min(BLOCK - len(self._buffer), len(view))
                self._buffer += view[:take]
                view = view[take:]
                self.offset += take
                if len(self._buffer) == BLOCK:
                    block = bytes(self._buffer)
                    self._buffer.clear()
                    self._header(block)
            elif self._state == _DATA:
                take = min(self._remaining, len(view))
                chunk = view[:take]
                view = view[take:]
                self.offset += take
                self._remaining -= take
                if self._metadata is not None:
                    self._metadata += chunk
                else:
                    self._handler.data(bytes(chunk))
                if self._remaining == 0:
                    self._end_entry()
            else:
                take = min(self._padding, len(view))
                view = view[take:]
                self.offset += take
                self._padding -= take
                if self._padding == 0:
                    self._state = _HEADER

    def close(self) -> None:
        """The stream is over. An archive cut inside an entry (or a header) is an error
        that says so; one that ends between entries without its end-of-archive marker
        is taken, as Go's reader takes it (`ended` says which it was)."""
        if self.ended:
            return
        if self._state == _DATA and self._metadata is None and self._entry is not None:
            entry = self._entry
            raise ArchiveError(
                f"the archive ended early: {entry.name!r} has {entry.size - self._remaining} "
                f"of its {entry.size} bytes (was the upload cut short?)"
            )
        if self._state != _HEADER or self._buffer or self._pending:
            raise ArchiveError(
                f"the archive ended early, inside an entry's header at byte {self.offset} "
                "(was the upload cut short?)"
            )

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self.ended = True
            return
        if self._zero_blocks:
            raise ArchiveError(
                f"corrupt archive: an entry follows an end-of-archive block at byte {self.offset}"
            )
        self._check_sum(block)
        self._headers += 1
        kind = block[156:157]
        size = _number(block[124:136], self.offset)
        if kind in _METADATA:
            limit = MAX_METADATA if kind in (_PAX, _PAX_GLOBAL) else MAX_NAME
            if size > limit:
                raise ArchiveError(
                    f"refused: the archive has a {_metadata_name(kind)} of {size} bytes "
                    f"(the limit is {limit})"
                )
            self._metadata = bytearray()
            self._metadata_kind = kind
            self._begin_data(size)
            return
        name = self._pending.pop("path", None) or _name(block)
        linkname = self._pending.pop("linkpath", None) or _string(block[157:257])
        if "size" in self._pending:
            size = _pax_size(self._pending.pop("size"))
        if self._pending.pop("sparse", None) is not None:
            kind = b"S"
        self._pending.clear()
        what = _KINDS.get(kind, f"entry of type {kind!r}")
        if what == REGULAR and name.endswith("/"):
            what = DIRECTORY  # old tars mark directories by their name only
        self._entry = Entry(name, what, size, linkname)
        self._handler.begin(self._entry)
        self._begin_data(size)

    def _begin_data(self, size: int) -> None:
        self._remaining = size
        self._padding = -size % BLOCK
        self._state = _DATA
        if size == 0:
            self._end_entry()

    def _end_entry(self) -> None:
        if self._metadata is not None:
            metadata, self._metadata = bytes(self._metadata), None
            if self._metadata_kind == _PAX:
                self._pending.update(_pax_records(metadata))
            elif self._metadata_kind == _GNU_LONGNAME:
                self._pending["path"] = _string(metadata)
            elif self._metadata_kind == _GNU_LONGLINK:
                self._pending["linkpath"] = _string(metadata)
            # A pax global header sets defaults for what follows: nothing ferryd reads.
        else:
            self._handler.end()
            self._entry = None
        self._state = _PADDING if self._padding else _HEADER

    def _check_sum(self, block: bytes) -> None:
        try:
            stored: int | None = _number(block[148:156], self.offset)
        except ArchiveError:
            stored = None
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b >= 128)
        if stored not in (unsigned, signed):
            if self._headers == 0:
                raise ArchiveError(
                    "not a tar archive (nor a gzip- or zstd-compressed one): its first "
                    "header's checksum is wrong"
                )
            raise ArchiveError(
                f"corrupt archive: a header's checksum is wrong at byte {self.offset}"
            )


def _metadata_name(kind: bytes) -> str:
    return "pax header" if kind in (_PAX, _PAX_GLOBAL) else "GNU long name"


def _string(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _name(block: bytes) -> str:
    name = _string(block[0:100])
    if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix holds the start of long names
        prefix = _string(block[345:500])
        if prefix:
            return f"{prefix}/{name}"
    return name


def _number(field: bytes, offset: int) -> int:
    """A numeric header field: octal text, or GNU's base-256 for large values."""
    if field[:1] and field[0] & 0x80:
        if field[0] == 0xFF:
            raise ArchiveError(f"corrupt archive: a negative number in a header at byte {offset}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    # Octal digits only: int(text, 8) would also take a sign and `_` (a size of `-7`
    # would swallow the entries that follow).
    if _OCTAL.fullmatch(text) is None:
        raise ArchiveError(
            f"corrupt archive: a header field is not an octal number ({text[:12]!r}) at byte "
            f"{offset}"
        )
    return int(text, 8)


def _pax_size(value: str) -> int:
    size = decimal(value)
    if size is None:
        raise ArchiveError(
            f"corrupt archive: a pax size of {value[:40]!r} (not a decimal number of at most "
            f"{MAX_DIGITS} digits)"
        )
    return size


def _pax_records(data: bytes) -> dict[str, str]:
    """`"%d %s=%s\\n"` records; the keys ferryd reads: path, linkpath, size, and any GNU
    sparse key (a sparse file, refused by the handler)."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        length = decimal(data[position:space].decode("latin-1")) if space >= 0 else None
        if length is None:
            raise ArchiveError("corrupt archive: a malformed pax record (its length)")
        record = data[position : position + length]
        if length <= space - position or len(record) != length or not record.endswith(b"\n"):
            raise ArchiveError("corrupt archive: a malformed pax record")
        key, equals, value = record[space - position + 1 : -1].partition(b"=")
        if not equals:
            raise ArchiveError("corrupt archive: a malformed pax record")
        text = value.decode("utf-8", "surrogateescape")
        name = key.decode("utf-8", "surrogateescape")
        if name in ("path", "linkpath", "size"):
            if name != "size" and len(text) > MAX_NAME:
                raise ArchiveError(f"refused: a name of {len(text)} characters in the archive")
            records[name] = text
        elif name.startswith("GNU.sparse."):
            records["sparse"] = text
        position += length
    return records
