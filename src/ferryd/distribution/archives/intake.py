"""An archive's entries written to a staging directory as they stream in, each hashed on
the way: the digest of its bytes and, for a gzip or zstd entry, the digest of what it
decompresses to. Which entry is a layer, a config or a manifest is only known once
`manifest.json` or `index.json` has been read, and that may come last; by then every
entry has been hashed once, as it arrived, and the checks only compare digests.

An uncompressed entry's DiffID is its digest. A compressed one is inflated and hashed
as it streams (codec's `LayerSink`: ~1 MiB pieces, the DiffID hashed in a thread of its
own); one that does not decompress is only an error if a layer turns out to be it.

Names are checked before anything is written: an absolute path, a `..` that leaves the
archive, a symbolic link that points outside it, a hard link, a device, a FIFO or a
sparse file refuse the whole archive. Files are written under numbers, never under
their names, so a name can never reach anything on disk. Symbolic links inside the
archive are aliases (docker before 25 and skopeo write them for repeated layers).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ferryd.codec import BATCH_SIZE, LayerSink, detect_compression
from ferryd.distribution.archives import tarstream
from ferryd.distribution.archives.layout import SMALL_FILES, digest_of
from ferryd.errors import ArchiveError, ContentError
from ferryd.oci.digest import HEX_DIGITS, Digest, algorithm_of, hex_of
from ferryd.oci.mediatypes import Compression

MAX_ENTRIES = 100_000  # files and links; docker's own archives have a few per layer
# Memory the names and link targets of one archive's entries may take: they are kept until
# the load is planned. A docker save's few hundred names take some KiB; without a budget,
# 20,000 symbolic links of 4 KiB names and 8 KiB targets (0.6 MiB of gzip) held 206 MiB.
MAX_NAME_MEMORY = 32 * 2**20
_MAX_LINK_HOPS = 16
_SNIFF = 4  # bytes that tell gzip and zstd from the rest (codec.detect_compression)


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A regular file of the archive, as written to the staging directory."""

    name: str  # its clean name in the archive
    path: Path  # where it is staged
    size: int
    digest: Digest
    # What it decompresses to (a layer's DiffID); its digest when it is not compressed;
    # None when it is gzip or zstd that does not decompress (`broken` says why).
    diff_id: Digest | None
    uncompressed_size: int
    compression: Compression
    broken: ContentError | None = None


def clean_name(raw: str) -> str:
    """`./a//b/` → `a/b`; an absolute path or a `..` is refused."""
    if raw.startswith("/"):
        raise ArchiveError(f"refused: archive entry {raw!r} has an absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"refused: archive entry {raw!r} points outside the archive (..)")
    return "/".join(parts)


def not_the_blob(name: str, digest: str, staged: StagedFile) -> str:
    """Why the archive's `name` is not the blob `digest` it stands for: its content, or
    that of the file it links to, has another digest."""
    if staged.name != name:
        return (
            f"the archive's {name} is not the blob it is named after ({digest}): it is a "
            f"symbolic link to {staged.name}, whose content has digest {staged.digest}"
        )
    return (
        f"the archive's {name} is not the blob it is named after ({digest}): its content "
        f"has digest {staged.digest}"
    )


def _link_target(name: str, target: str) -> str:
    """Where a symbolic link at `name` points, as a clean name inside the archive."""
    if target.startswith("/"):
        raise ArchiveError(f"refused: symbolic link {name} points to an absolute path ({target!r})")
    parts = name.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ArchiveError(
                    f"refused: symbolic link {name} points outside the archive ({target!r})"
                )
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def progress_id(name: str) -> str:
    """The short id docker shows for a layer file: its digest or directory, 12 chars."""
    blob = digest_of(name)
    if blob is not None:
        return hex_of(blob)[:12]
    head, _, tail = name.rpartition("/")
    stem = head.rpartition("/")[2] if head and tail == "layer.tar" else tail
    return stem.split(".", 1)[0][:12]


class _EntrySink:
    """One file being staged. Stage one (`write`, `finish`): written and hashed. Stage
    two (`inflate`, `complete`), for a compressed file only: inflated and hashed for its
    DiffID, in another thread, one batch behind, as a pull's layers are (codec's
    `LayerSink` is made for the two)."""

    def __init__(self, name: str, path: Path, size: int) -> None:
        self.name = name
        self.path = path
        self.size = size
        expected = digest_of(name)
        # Hashed with the algorithm of the digest it is named after (sha256 otherwise).
        self._algorithm = algorithm_of(expected) if expected is not None else "sha256"
        self._head = b""
        self._sink: LayerSink | None = None
        self.compression = Compression.NONE
        self.staged: StagedFile | None = None  # once stage one has finished it

    @property
    def looks_like_json(self) -> bool:
        return self._head[:1] in (b"{", b"[")

    @property
    def compressed(self) -> bool:
        return self.compression is not Compression.NONE

    def may_be_layer(self, size: int) -> bool:
        """Worth a `Loading layer` line: compressed, or big enough to be a tar and not
        JSON (a tar has at least two 512-byte blocks; `VERSION` files have 3 bytes)."""
        return self.compressed or (size >= 2 * 512 and not self.looks_like_json)

    def write(self, data: bytes) -> bytes | None:
        """Stage one; returns what stage two must inflate, if anything."""
        if self._sink is None:
            self._head += data
            if len(self._head) < _SNIFF:
                return None
            data, self._head = self._head, self._head[:_SNIFF]
            self._open(data)
        assert self._sink is not None
        self._sink.store(data)
        return data if self.compressed else None

    def _open(self, first: bytes) -> None:
        self.compression = detect_compression(first)
        placeholder = Digest(f"{self._algorithm}:" + "0" * HEX_DIGITS[self._algorithm])
        # A file that fits in a batch is inflated and hashed in one thread: handing its
        # pieces to a hashing thread costs more than the overlap saves.
        self._sink = LayerSink(
            self.path, placeholder, diff_id=self.compressed, small=self.size <= BATCH_SIZE
        )
        self._sink.open()

    def finish(self) -> tuple[StagedFile, bytes | None]:
        """Stage one is done with the file: what it is so far (a compressed file's
        DiffID comes with `complete`), and the last bytes stage two must inflate."""
        rest = None
        if self._sink is None:  # fewer bytes than a compression magic: plain
            self._open(self._head)
            rest = self.write(self._head) if self._head else None
        sink = self._sink
        assert sink is not None
        sink.settle()  # all of it in the file, and what the disk refused raised, now
        digest = sink.digest_so_far()
        # The sink checks what it was told to expect: the content is what it is, and
        # what it must be is decided once the archive says what this file is.
        sink.expected = digest
        size = sink.offset
        self.staged = StagedFile(self.name, self.path, size, digest, digest, size, self.compression)
        return self.staged, rest

    def inflate(self, data: bytes) -> None:
        assert self._sink is not None
        self._sink.inflate(data)

    def complete(self) -> StagedFile:
        """Stage two is done with the file: its DiffID, or why it does not decompress."""
        sink, staged = self._sink, self.staged
        assert sink is not None
        assert staged is not None
        try:
            diff_id = sink.verify()
        except ContentError as exc:
            return replace(staged, diff_id=None, broken=exc)
        finally:
            sink.close()
        return replace(staged, diff_id=diff_id, uncompressed_size=sink.uncompressed_size)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


Job = tuple[_EntrySink, bytes | None]
"""Stage two's work: bytes of a compressed file to inflate, or None: the file is over."""


class Intake:
    """The tar handler of a load: stages each file of the archive under `directory`.

    The tar is parsed, files written and hashed in stage one (`begin`, `data`, `end`);
    compressed files are inflated for their DiffID in stage two (`inflate`), which the
    caller runs in another thread with the jobs `take_jobs` hands over, in order.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, StagedFile] = {}
        self.links: dict[str, str] = {}  # symbolic link → the name it points to
        self._names: set[str] = set()
        self._sink: _EntrySink | None = None
        self._open: list[_EntrySink] = []  # sinks not yet closed (stage two may hold them)
        self._jobs: list[Job] = []
        self._count = 0
        self._name_memory = 0  # what the names and link targets kept take
        self.complete = True  # False: the archive ended without its end-of-archive marker
        # Layer-like files (not JSON) that ended since the caller last looked: (id, size).
        self.finished: list[tuple[str, int]] = []

    @property
    def current(self) -> _EntrySink | None:
        return self._sink

    def begin(self, entry: tarstream.Entry) -> None:
        name = clean_name(entry.name)
        if entry.kind == tarstream.DIRECTORY:
            return
        if not name:
            raise ArchiveError(f"refused: archive entry {entry.name!r} has no name")
        if entry.kind not in (tarstream.REGULAR, tarstream.SYMLINK):
            raise ArchiveError(
                f"refused: archive entry {name} is a {entry.kind} (an image archive holds "
                "only files, directories and symbolic links inside it)"
            )
        if name in self._names:
            raise ArchiveError(f"refused: the archive has {name} twice")
        self._count += 1
        if self._count > MAX_ENTRIES:
            raise ArchiveError(f"refused: the archive has more than {MAX_ENTRIES} entries")
        target = _link_target(name, entry.linkname) if entry.kind == tarstream.SYMLINK else None
        self._keep(name, target)
        self._names.add(name)
        if target is not None:
            self.links[name] = target
            return
        limit = SMALL_FILES.get(name)
        if limit is not None and entry.size > limit:
            raise ArchiveError(
                f"refused: the archive's {name} has {entry.size} bytes (the limit is {limit})"
            )
        self._sink = _EntrySink(name, self.directory / f"{self._count:06d}", entry.size)
        self._open.append(self._sink)

    def _keep(self, name: str, target: str | None) -> None:
        """Count the strings an entry leaves in memory until the archive is planned (its
        name is one object, shared by `_names`, `links` and its `StagedFile`), and refuse
        the archive once they take more than `MAX_NAME_MEMORY`, before they are kept."""
        # What a str occupies, not its length: one non-Latin-1 character makes every
        # character of a name take 2 or 4 bytes.
        self._name_memory += sys.getsizeof(name)
        if target is not None:
            self._name_memory += sys.getsizeof(target)
        if self._name_memory > MAX_NAME_MEMORY:
            raise ArchiveError(
                f"refused: the names and link targets of the archive's first {self._count} "
                f"entries take more than {MAX_NAME_MEMORY / 2**20:g} MiB (an image archive's "
                f"take a few KiB); the last is {name[:100]!r}"
            )

    def data(self, chunk: bytes) -> None:
        sink = self._sink
        if sink is not None:
            inflate = sink.write(chunk)
            if inflate is not None:
                self._jobs.append((sink, inflate))

    def end(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        staged, rest = sink.finish()
        expected = digest_of(staged.name)
        if expected is not None and staged.digest != expected:
            raise ArchiveError(
                f"the archive's {staged.name} is not the blob it is named after: its content "
                f"has digest {staged.digest}"
            )
        if sink.compressed:
            if rest is not None:
                self._jobs.append((sink, rest))
            self._jobs.append((sink, None))
        else:
            self.files[staged.name] = staged
            sink.close()
            self._open.remove(sink)
        if sink.may_be_layer(staged.size):
            self.finished.append((progress_id(staged.name), staged.size))

    def take_jobs(self) -> list[Job]:
        """Stage two's work since the last call (stage one's thread, between calls)."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def inflate(self, jobs: list[Job]) -> None:
        """Stage two: run `jobs`, in the order `take_jobs` gave them."""
        for sink, data in jobs:
            if data is not None:
                sink.inflate(data)
            else:
                staged = sink.complete()
                self.files[staged.name] = staged
                self._open.remove(sink)

    def abort(self) -> None:
        """Close every file still open (the archive was refused or cut)."""
        self._sink = None
        self._jobs.clear()
        for sink in self._open:
            sink.close()
        self._open.clear()

    def check_blob_links(self) -> None:
        """Every symbolic link named as a blob (`blobs/sha256/<hex>`) leads to that blob:
        a regular file is checked against its name as it ends, but a link's target may
        come after it, so links are checked once the archive is in. A link whose target
        is missing is left to whoever needs it (it is then missing)."""
        for name in self.links:
            expected = digest_of(name)
            staged = self.resolve(name) if expected is not None else None
            if expected is not None and staged is not None and staged.digest != expected:
                raise ArchiveError(not_the_blob(name, expected, staged))

    def resolve(self, name: str) -> StagedFile | None:
        """The file `name` (a path from manifest.json, or a blob) is, links followed."""
        try:
            name = clean_name(name)
        except ArchiveError:
            return None
        for _ in range(_MAX_LINK_HOPS):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                return None
            name = self.links[name]
        return None
