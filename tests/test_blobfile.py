"""A blob's file: written through the page cache at once; every 4 MiB a background thread
hands the last 16 MiB to the kernel (to write, then drop), every 64 MiB flushing the file
too, on a descriptor of its own (the file opened again, not a dup), one hand-over per file
at a time, none when that descriptor cannot be had. A hand-over's error is raised by the
next write due, `settle` or `finish` (and by a load's staging), and a file one failed on
is emptied as it closes. `finish` waits for the hand-over under way (calls off one not
started), then fsyncs and lets go of the file whole. Read past the page cache (O_DIRECT
into kept buffers), through it where the filesystem refuses direct IO."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import anyio
import pytest

from ferryd import blobfile
from ferryd.blobfile import BLOCK, BlobFile, BlobReader
from ferryd.codec import LayerSink
from ferryd.distribution import push_layers
from ferryd.distribution.archives import save
from ferryd.distribution.archives.intake import _EntrySink
from ferryd.distribution.push_layers import StoredBlob
from ferryd.errors import StorageFullError, StoreError
from ferryd.oci.digest import sha256_digest
from support import disks

MiB = 1 << 20  # a read's kept buffer
BLOB = os.urandom(3 * MiB + 12345)  # under `_KICK`: nothing handed to the kernel
# Pieces of every awkward size: under a block, a block and one byte, over a MiB.
SIZES = [1, BLOCK - 1, BLOCK + 1, 100_000, (1 << 20) + 7, 3]
PAGE = blobfile._PAGE
DONTNEED = os.POSIX_FADV_DONTNEED
# `_KICK` and `_FLUSH_EVERY` in the tests of background flushes (`flushes`), and their data.
KICK = 4 * PAGE
EVERY = 4 * KICK
DATA = os.urandom(4 * EVERY + KICK)


def _drain_background() -> None:
    """Until every hand-over given to the pool so far has ended: each of its threads takes
    a job that waits for the others' (the queue is first come, first served)."""
    workers = blobfile._BACKGROUND._max_workers
    meeting = threading.Barrier(workers)
    jobs = [blobfile._BACKGROUND.submit(meeting.wait, 10) for _ in range(workers)]
    for job in jobs:
        job.result()  # BrokenBarrierError: a hand-over still ran after 10 s


@pytest.fixture(autouse=True)
def _background_drained() -> Iterator[None]:
    """No hand-over of another test runs during this one (its calls would be recorded, its
    descriptors counted), nor one of this test after it."""
    _drain_background()
    yield
    _drain_background()


def _direct_io_works(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "blob"


@pytest.fixture
def direct_path(path: Path) -> Path:
    """`path`, on a filesystem that takes direct IO (which a reader uses)."""
    if not _direct_io_works(path.parent):
        pytest.skip("this filesystem refuses O_DIRECT")
    return path


def _pieces(data: bytes) -> list[bytes]:
    out, at, turn = [], 0, 0
    while at < len(data):
        size = SIZES[turn % len(SIZES)]
        out.append(data[at : at + size])
        at, turn = at + size, turn + 1
    return out


def _write(file: BlobFile, data: bytes) -> None:
    for piece in _pieces(data):
        file.write(piece)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _is_direct(file: BlobReader) -> bool:
    return bool(fcntl.fcntl(file._fd, fcntl.F_GETFL) & os.O_DIRECT)


def _open_fds() -> int:
    """How many descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def _recorded(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    calls: list[tuple[Any, ...]],
    threads: list[str] | None = None,
) -> None:
    """`os.<name>` as blob files see it, patched to record each call in `calls` (and the
    name of the thread that makes it in `threads`), then make it."""
    real = getattr(os, name)

    def call(*args: Any) -> Any:
        calls.append((name, *args))
        if threads is not None:
            threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(blobfile.os, name, call)


# Writing.


def test_pieces_of_any_size_reach_the_file_at_once_and_end_as_the_blob(path: Path) -> None:
    file = BlobFile(path)
    _write(file, BLOB)
    assert path.read_bytes() == BLOB  # nothing waits in the process for finish
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_short_write_goes_on_from_where_it_stopped(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    monkeypatch.setattr(
        blobfile.os, "pwrite", lambda fd, data, offset: real(fd, data[:1000], offset)
    )
    file = BlobFile(path)
    _write(file, BLOB)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_reopened_file_gives_back_its_bytes_and_goes_on_after_them(path: Path) -> None:
    cut = 2 * BLOCK + 1000
    path.write_bytes(BLOB[:cut])

    file = BlobFile(path)
    assert file.size == cut
    assert b"".join(file.pieces(5000)) == BLOB[:cut]
    _write(file, BLOB[cut:])
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_closing_without_finishing_leaves_what_was_written_for_a_resume(path: Path) -> None:
    file = BlobFile(path)
    _write(file, BLOB[: 5 * BLOCK + 77])
    file.close()

    assert path.read_bytes() == BLOB[: 5 * BLOCK + 77]


def test_truncating_starts_the_blob_again_from_its_first_byte(path: Path) -> None:
    file = BlobFile(path)
    _write(file, b"x" * (BLOCK * 3 + 5))
    file.truncate()
    _write(file, BLOB)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_blob_started_again_after_finishing_ends_as_the_new_blob(path: Path) -> None:
    file = BlobFile(path)
    _write(file, b"x" * (BLOCK + 5))
    file.finish()
    file.truncate()
    _write(file, BLOB)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_full_disk_is_raised_and_what_reached_the_file_is_a_prefix_of_the_blob(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 2 * MiB)
    file = BlobFile(path)
    with pytest.raises(OSError) as refused:
        _write(file, BLOB)
    file.close()

    assert refused.value.errno == errno.ENOSPC
    assert path.read_bytes() == BLOB[: 2 * MiB]  # all the room it had


def test_a_write_that_makes_no_progress_is_a_full_disk(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobfile.os, "pwrite", lambda fd, data, offset: 0)
    file = BlobFile(path)
    with pytest.raises(OSError) as refused:
        file.write(BLOB[: 2 * BLOCK])
    file.close()

    assert refused.value.errno == errno.ENOSPC


def _staged(path: Path, data: bytes) -> _EntrySink:
    """A load's sink for an archive file holding `data`, named after its digest."""
    return _EntrySink("blobs/sha256/" + sha256_digest(data).split(":")[1], path, len(data))


def test_a_staged_archive_file_that_finds_the_disk_full_fails_the_load(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 0)
    data = BLOB[: 3 * BLOCK + 1000]
    sink = _staged(path, data)

    with pytest.raises(StorageFullError):
        sink.write(data)
    sink.close()


def test_a_staged_archive_file_too_short_to_tell_its_format_finds_the_disk_full_as_it_ends(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 0)
    data = b"1.0"  # fewer bytes than a compression magic: written by `finish`
    sink = _staged(path, data)
    assert sink.write(data) is None

    with pytest.raises(StorageFullError):
        sink.finish()
    sink.close()


# The page cache: what was appended is handed to the kernel as it goes, by a background
# thread on a descriptor of its own; all of it at the end, by `finish`.


def _handed_over(file: BlobFile) -> None:
    """Wait for the file's hand-over, if one is under way (its error stays for the file to
    raise)."""
    if file._background is not None:
        futures.wait([file._background])


def test_every_4_mib_appended_the_last_16_mib_are_handed_to_the_kernel_to_write_and_drop(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    threads: list[str] = []
    _recorded(monkeypatch, "posix_fadvise", calls, threads)
    file = BlobFile(path)
    for _ in range(40):
        file.write(bytes(MiB))
        _handed_over(file)
    assert path.stat().st_size == 40 * MiB
    spare = file._spare
    assert spare not in (-1, file._fd)
    file.close()

    ends = range(4 * MiB, 41 * MiB, 4 * MiB)
    assert calls == [
        ("posix_fadvise", spare, max(0, end - 16 * MiB), min(end, 16 * MiB), DONTNEED)
        for end in ends
    ]
    assert threading.current_thread().name not in threads  # none made by the writer
    assert all(name.startswith("ferryd-writeback") for name in threads)


def test_a_write_of_many_mib_hands_over_its_last_16_mib_once(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "posix_fadvise", calls)
    file = BlobFile(path)
    file.write(bytes(3 * MiB))  # not 4 MiB yet: nothing
    assert file._background is None
    file.write(bytes(37 * MiB))
    _handed_over(file)
    spare = file._spare
    file.close()

    assert calls == [("posix_fadvise", spare, 24 * MiB, 16 * MiB, DONTNEED)]


def test_the_partial_last_page_of_a_write_is_never_handed_over(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "posix_fadvise", calls)
    first, second = 4 * MiB + PAGE, 8 * MiB + 3 * PAGE  # page boundaries
    file = BlobFile(path)
    file.write(bytes(3 * MiB))
    file.write(bytes(first + 123 - 3 * MiB))  # ends 123 bytes into a page
    _handed_over(file)
    file.write(bytes(second + PAGE - 1 - (first + 123)))  # ends a byte short of the next
    _handed_over(file)
    spare = file._spare
    file.close()

    assert path.stat().st_size == second + PAGE - 1
    assert calls == [  # each up to the page boundary below the end
        ("posix_fadvise", spare, 0, first, DONTNEED),
        ("posix_fadvise", spare, 0, second, DONTNEED),
    ]


def test_finish_fsyncs_then_lets_go_of_the_whole_files_pages(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "fsync", calls)
    _recorded(monkeypatch, "posix_fadvise", calls)
    file = BlobFile(path)
    fd = file._fd
    _write(file, BLOB)
    assert calls == []
    file.finish()
    file.close()

    assert calls == [("fsync", fd), ("posix_fadvise", fd, 0, 0, DONTNEED)]
    assert path.read_bytes() == BLOB


def test_a_system_without_fadvise_gets_the_same_blob(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(blobfile.os, "posix_fadvise")
    blob = os.urandom(9 * MiB)
    file = BlobFile(path)
    for piece in _chunks(blob, MiB):
        file.write(piece)
    file.finish()
    file.close()

    assert path.read_bytes() == blob


# Background flushes: a hand-over flushes the file too, every `_FLUSH_EVERY` bytes.


class _Flushes:
    """`os.fdatasync` as blob files see it, patched: records each flush (the inode and
    size of the file its descriptor names, the descriptor, the thread), waits while held
    (a flush never released fails the test), fails with `error` if set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fds: list[int] = []
        self.threads: list[str] = []
        self.error: int | None = None
        self.done: list[int] = []  # the descriptors whose flush has ended
        self.stuck = False  # a held flush gave up waiting for `release`
        self._release = threading.Event()
        self._release.set()
        self._changed = threading.Condition()
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            stat = os.fstat(fd)
            with self._changed:
                self.calls.append((stat.st_ino, stat.st_size))
                self.fds.append(fd)
                self.threads.append(threading.current_thread().name)
                self._changed.notify_all()
            try:
                if not self._release.wait(10):
                    self.stuck = True
                    raise AssertionError("a flush held for 10 s: never released")
                if self.error is not None:
                    raise OSError(self.error, os.strerror(self.error))
                real(fd)
            finally:
                self.done.append(fd)

        monkeypatch.setattr(blobfile.os, "fdatasync", fdatasync)

    def hold(self) -> None:
        """Flushes wait from here until `release`."""
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def wait_for(self, count: int) -> None:
        """Until `count` flushes have started."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.calls) >= count, 5)


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Flushes]:
    """A hand-over every `KICK` bytes and a flush every `EVERY`, through a patched
    fdatasync."""
    monkeypatch.setattr(blobfile, "_KICK", KICK)
    monkeypatch.setattr(blobfile, "_FLUSH_EVERY", EVERY)
    flushes = _Flushes(monkeypatch)
    yield flushes
    flushes.release()  # a held flush ends with its test
    assert not flushes.stuck, "a flush was held until it gave up: the test never released it"


def _started(call: Callable[[], object]) -> futures.Future[object]:
    """`call`, made in a thread of its own while the test goes on."""
    future: futures.Future[object] = futures.Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _still_waiting(call: futures.Future[object]) -> bool:
    """`call` has not returned 0.2 s on."""
    done, _ = futures.wait([call], 0.2)
    return not done


def _flush_held(path: Path, flushes: _Flushes) -> BlobFile:
    """A new file at `path` whose first flush has started, held."""
    flushes.hold()
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    flushes.wait_for(1)
    return file


def _returns_while_held(
    call: Callable[[], object], others: list[BlobFile], flushes: _Flushes
) -> None:
    """`call` returns while the pool is held by `others` (`_pool_held`), not behind their
    flushes; then they are let go and closed."""
    assert _started(call).result(5) is None
    flushes.release()
    for other in others:
        other.close()
    _drain_background()


def _pool_held(path: Path, flushes: _Flushes) -> list[BlobFile]:
    """Other files beside `path`, each of the pool's 3 threads held by one's flush."""
    flushes.hold()
    others = [BlobFile(path.with_name(f"other-{n}")) for n in range(3)]
    for other in others:
        other.write(DATA[:EVERY])
    flushes.wait_for(3)
    return others


def test_a_hand_over_flushes_every_flush_every_bytes_in_the_background_on_a_descriptor_of_its_own(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    opens: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "open", opens)
    fds = _open_fds()
    file = BlobFile(path)
    assert file._spare == -1  # none until the first hand-over
    own = file._fd
    for piece in _chunks(DATA[: 4 * EVERY], EVERY // 2):  # a hand-over each
        file.write(piece)
        _handed_over(file)
    spare = file._spare
    spare_access = fcntl.fcntl(spare, fcntl.F_GETFL) & os.O_ACCMODE
    file.finish()
    file.close()

    inode = path.stat().st_ino
    assert flushes.calls == [
        (inode, EVERY),
        (inode, 2 * EVERY),
        (inode, 3 * EVERY),
        (inode, 4 * EVERY),
    ]
    # The file opened again, once: a description of its own, not a dup of the file's (the
    # error a flush meets is then reported to each of them, the file's by `finish`).
    assert [call for call in opens if call[1] == path] == [
        ("open", path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666),
        ("open", path, os.O_RDONLY | os.O_CLOEXEC),
    ]
    assert spare_access == os.O_RDONLY
    assert flushes.fds == [spare] * 4
    assert own not in flushes.fds
    assert all(name.startswith("ferryd-writeback") for name in flushes.threads)
    assert _open_fds() == fds  # the spare closed with the file
    assert path.read_bytes() == DATA[: 4 * EVERY]


def test_truncating_starts_the_flush_count_again(path: Path, flushes: _Flushes) -> None:
    file = BlobFile(path)
    for piece in _chunks(DATA[: 3 * EVERY], EVERY):
        file.write(piece)
        _handed_over(file)
    file.truncate()
    file.write(DATA[:EVERY])  # a flush due: EVERY since the file was emptied
    _handed_over(file)
    file.close()

    inode = path.stat().st_ino
    assert flushes.calls == [(inode, EVERY), (inode, 2 * EVERY), (inode, 3 * EVERY), (inode, EVERY)]
    assert path.read_bytes() == DATA[:EVERY]


def test_truncating_waits_for_the_hand_over_under_way_and_forgets_its_failure(
    path: Path, flushes: _Flushes
) -> None:
    flushes.error = errno.EIO
    file = _flush_held(path, flushes)
    truncating = _started(file.truncate)
    assert _still_waiting(truncating)
    assert path.stat().st_size == EVERY  # not emptied under the flush
    flushes.release()
    assert truncating.result(5) is None  # the failure goes with the bytes it was about
    flushes.error = None
    file.write(DATA[:EVERY])  # a flush due: EVERY since the file was emptied; nothing raised
    _handed_over(file)
    file.finish()
    file.close()

    inode = path.stat().st_ino
    assert flushes.calls == [(inode, EVERY), (inode, EVERY)]
    assert path.read_bytes() == DATA[:EVERY]  # kept as it closed: nothing failed since


def test_a_file_has_one_hand_over_at_a_time_and_a_kick_during_one_is_skipped(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "posix_fadvise", calls)
    file = _flush_held(path, flushes)
    other = BlobFile(path.with_name("other"))
    running = file._background
    for piece in _chunks(DATA[EVERY : 4 * EVERY], EVERY):  # each would start one
        file.write(piece)
        assert file._background is running
    other.write(DATA[:EVERY])  # another file's starts meanwhile
    flushes.wait_for(2)
    flushes.release()
    _handed_over(file)
    _handed_over(other)
    assert len(flushes.calls) == 2

    file.write(b"x")  # the next one, once the last has ended
    _handed_over(file)
    spare, other_spare = file._spare, other._spare
    file.close()
    other.close()

    inode, other_inode = path.stat().st_ino, path.with_name("other").stat().st_ino
    assert flushes.calls == [(inode, EVERY), (other_inode, EVERY), (inode, 4 * EVERY + 1)]
    assert [call[1:] for call in calls if call[1] == spare] == [
        (spare, 0, EVERY, DONTNEED),
        (spare, 0, 4 * EVERY, DONTNEED),  # the kicks skipped meanwhile handed nothing
    ]
    assert [call[1:] for call in calls if call[1] == other_spare] == [
        (other_spare, 0, EVERY, DONTNEED)
    ]


def _no_spare_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """No descriptor to spare: `os.open` as blob files see it refuses read-only opens."""
    real = os.open

    def open_(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(path, flags, *args)

    monkeypatch.setattr(blobfile.os, "open", open_)


def _pool_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon is ending: the hand-overs' pool takes no more jobs."""
    ended = futures.ThreadPoolExecutor(1)
    ended.shutdown()
    monkeypatch.setattr(blobfile, "_BACKGROUND", ended)


@pytest.mark.parametrize(
    "refuse", [_no_spare_descriptor, _pool_ended], ids=["no descriptor", "pool ended"]
)
def test_a_hand_over_that_cannot_be_had_is_left_to_the_next_write_and_finish(
    path: Path,
    flushes: _Flushes,
    monkeypatch: pytest.MonkeyPatch,
    refuse: Callable[[pytest.MonkeyPatch], None],
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "fsync", calls)
    _recorded(monkeypatch, "posix_fadvise", calls)
    fds = _open_fds()
    file = BlobFile(path)
    fd = file._fd
    with pytest.MonkeyPatch.context() as refusing:
        refuse(refusing)
        for piece in _chunks(DATA, KICK):  # a hand-over due at each
            file.write(piece)
            assert file._background is None  # skipped: the writes go on
    assert flushes.calls == []
    file.write(b"x")  # one can be had again: it hands over all that came since the last
    _handed_over(file)
    spare = file._spare
    file.finish()
    file.close()

    inode = path.stat().st_ino
    assert flushes.calls == [(inode, len(DATA) + 1)]
    assert [call for call in calls if call[1] == spare] == [
        ("posix_fadvise", spare, 0, len(DATA), DONTNEED)
    ]
    assert [call for call in calls if call[1] == fd] == [
        ("fsync", fd),
        ("posix_fadvise", fd, 0, 0, DONTNEED),
    ]
    assert _open_fds() == fds
    assert path.read_bytes() == DATA + b"x"


def test_finish_waits_for_the_hand_over_under_way_before_it_fsyncs(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed_by_then: list[list[int]] = []  # at each fsync, the flushes that had ended
    real = os.fsync

    def fsync(fd: int) -> None:
        flushed_by_then.append(list(flushes.done))
        real(fd)

    monkeypatch.setattr(blobfile.os, "fsync", fsync)
    file = _flush_held(path, flushes)
    finishing = _started(file.finish)
    assert _still_waiting(finishing)
    assert flushed_by_then == []
    flushes.release()
    assert finishing.result(5) is None
    spare = file._spare
    file.close()

    assert flushed_by_then == [[spare]]
    assert path.read_bytes() == DATA[:EVERY]


def test_finish_calls_off_a_hand_over_that_has_not_started_and_fsyncs_all_of_it(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "fsync", calls)
    _recorded(monkeypatch, "posix_fadvise", calls)
    others = _pool_held(path, flushes)
    file = BlobFile(path)
    fd = file._fd
    file.write(DATA[:EVERY])
    waiting = file._background
    assert waiting is not None
    assert not waiting.running()
    _returns_while_held(file.finish, others, flushes)
    assert waiting.cancelled()
    spare = file._spare
    file.close()

    inode = path.stat().st_ino
    assert len(flushes.calls) == 3
    assert inode not in [call[0] for call in flushes.calls]
    assert [call for call in calls if call[1] in (fd, spare)] == [
        ("fsync", fd),
        ("posix_fadvise", fd, 0, 0, DONTNEED),
    ]
    assert path.read_bytes() == DATA[:EVERY]


def test_a_disk_error_met_by_a_background_flush_under_way_is_raised_by_finish_before_any_fsync(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "fsync", fsyncs)
    flushes.error = errno.EIO
    fds = _open_fds()
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    flushes.wait_for(1)  # under way: waited for, not called off
    with pytest.raises(OSError) as failed:
        file.finish()
    file.close()

    assert failed.value.errno == errno.EIO
    assert fsyncs == []
    assert _open_fds() == fds  # the spare too


def test_a_disk_error_met_by_a_background_flush_is_raised_by_the_write_due_to_start_the_next(
    path: Path, flushes: _Flushes
) -> None:
    flushes.error = errno.EIO
    fds = _open_fds()
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    _handed_over(file)
    file.write(DATA[EVERY : EVERY + KICK - 1])  # no hand-over due: nothing said yet
    with pytest.raises(OSError) as failed:
        file.write(DATA[EVERY + KICK - 1 : EVERY + KICK])
    assert path.read_bytes() == DATA[: EVERY + KICK]  # the write's bytes reached the file
    file.close()

    assert failed.value.errno == errno.EIO
    assert path.stat().st_size == 0  # emptied as it closed (see below)
    assert _open_fds() == fds


@pytest.mark.parametrize("raised", [True, False], ids=["raised by settle", "met by close"])
def test_closing_a_file_a_hand_over_failed_on_empties_it_for_a_resume_to_start_again(
    path: Path, flushes: _Flushes, raised: bool
) -> None:
    # The disk may not hold what the file holds, and a resume's fsync would not say so:
    # the failure was reported once, to the hand-over's descriptor.
    flushes.error = errno.EIO
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    if raised:
        with pytest.raises(OSError) as failed:
            file.settle()
        assert failed.value.errno == errno.EIO
    else:  # it has run and failed, unseen (one not yet started is called off by close)
        assert file._background is not None
        futures.wait([file._background])
    file.close()

    assert path.stat().st_size == 0
    again = BlobFile(path)
    assert again.size == 0
    assert list(again.pieces(MiB)) == []
    again.close()


def test_closing_a_file_whose_fsync_failed_empties_it_for_a_resume_to_start_again(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    file = BlobFile(path)
    file.write(BLOB)
    monkeypatch.setattr(blobfile.os, "fsync", failing)
    with pytest.raises(OSError) as failed:
        file.finish()
    file.close()

    assert failed.value.errno == errno.EIO
    assert path.stat().st_size == 0


def test_closing_a_file_calls_off_a_hand_over_that_has_not_started_and_keeps_its_bytes(
    path: Path, flushes: _Flushes
) -> None:
    others = _pool_held(path, flushes)
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    waiting = file._background
    assert waiting is not None
    _returns_while_held(file.close, others, flushes)

    assert waiting.cancelled()
    assert path.stat().st_ino not in [call[0] for call in flushes.calls]
    assert path.read_bytes() == DATA[:EVERY]


def test_a_layer_sink_closing_calls_off_its_files_hand_over_that_has_not_started(
    path: Path, flushes: _Flushes
) -> None:
    others = _pool_held(path, flushes)
    sink = LayerSink(path, sha256_digest(DATA[:EVERY]), diff_id=False)
    sink.open()
    sink.store(DATA[:EVERY])
    assert sink._file is not None
    waiting = sink._file._background
    assert waiting is not None
    _returns_while_held(sink.close, others, flushes)

    assert waiting.cancelled()
    assert path.read_bytes() == DATA[:EVERY]


def test_closing_a_file_its_hand_overs_went_well_for_keeps_its_bytes_for_a_resume(
    path: Path, flushes: _Flushes
) -> None:
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    file.settle()
    file.close()

    assert flushes.calls == [(path.stat().st_ino, EVERY)]
    again = BlobFile(path)
    assert again.size == EVERY
    assert b"".join(again.pieces(MiB)) == DATA[:EVERY]
    again.close()


def test_closing_a_file_while_its_hand_over_runs_waits_for_it_then_closes_both_descriptors(
    path: Path, flushes: _Flushes
) -> None:
    fds = _open_fds()
    file = _flush_held(path, flushes)
    closing = _started(file.close)
    assert _still_waiting(closing)
    assert _open_fds() == fds + 2  # the file's and the hand-over's, still flushing

    flushes.release()
    assert closing.result(5) is None
    assert flushes.done == flushes.fds  # the flush had ended
    assert _open_fds() == fds
    assert path.read_bytes() == DATA[:EVERY]


def test_a_staged_archive_file_whose_background_flush_fails_fails_the_load_as_stage_one_ends(
    path: Path, flushes: _Flushes
) -> None:
    # The load moves a staged file into the store as it is: what the disk refused must
    # be known before (`_EntrySink.finish` waits for the file's hand-over).
    flushes.error = errno.EIO
    flushes.hold()
    data = DATA[:EVERY]  # a flush due as it is written
    sink = _staged(path, data)
    sink.write(data)
    flushes.wait_for(1)
    ending = _started(sink.finish)
    assert _still_waiting(ending)
    flushes.release()
    with pytest.raises(StoreError) as failed:
        ending.result(5)
    sink.close()

    assert type(failed.value) is StoreError  # what a failing disk (EIO) is reported as
    assert "I/O error" in str(failed.value)
    assert sink.staged is None  # nothing for the load to move
    assert path.stat().st_size == 0


@pytest.mark.parametrize("opening", [BlobFile, BlobReader])
def test_a_file_that_fails_as_it_opens_leaks_no_descriptor(
    path: Path, monkeypatch: pytest.MonkeyPatch, opening: type[BlobFile | BlobReader]
) -> None:
    path.write_bytes(BLOB[:5000])
    fds = _open_fds()

    def no_stat(fd: int) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobfile.os, "fstat", no_stat)
    with pytest.raises(OSError):
        opening(path)
    monkeypatch.undo()

    assert _open_fds() == fds


def test_a_reader_whose_buffer_cannot_be_had_leaks_no_descriptor(
    direct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_path.write_bytes(BLOB[:5000])
    fds = _open_fds()

    def no_memory() -> Any:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(blobfile._buffers, "take", no_memory)
    with pytest.raises(OSError):
        BlobReader(direct_path)

    assert _open_fds() == fds


def test_a_new_download_opens_nothing_to_read_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobfile, "BlobReader", None)
    file = BlobFile(path)

    assert list(file.pieces(1 << 20)) == []
    file.close()


def test_a_partial_file_gives_back_what_it_held_when_opened(path: Path) -> None:
    path.write_bytes(BLOB[: 3 * BLOCK + 10])
    file = BlobFile(path)
    held = file.pieces(1 << 20)
    file.write(BLOB[3 * BLOCK + 10 : 8 * BLOCK])
    assert path.stat().st_size == 8 * BLOCK

    assert b"".join(held) == BLOB[: 3 * BLOCK + 10]
    file.close()


# Reading.


def _read_all(reader: BlobReader, size: int) -> bytes:
    out = []
    while piece := reader.read(size):
        out.append(piece)
    reader.close()
    return b"".join(out)


def test_a_stored_blob_is_read_past_the_page_cache_in_whole_blocks(direct_path: Path) -> None:
    direct_path.write_bytes(BLOB)
    reader = BlobReader(direct_path)

    assert reader.direct
    assert _is_direct(reader)
    first = reader.read(1 << 20)
    assert len(first) == 1 << 20
    assert first + _read_all(reader, 1 << 20) == BLOB
    assert reader.read(1 << 20) == b""


def test_reads_of_any_size_give_the_blob_through_the_page_cache_once_unaligned(
    direct_path: Path,
) -> None:
    direct_path.write_bytes(BLOB)
    reader = BlobReader(direct_path)

    assert _read_all(reader, 5000) == BLOB


def test_a_filesystem_without_direct_io_has_its_blobs_read_through_the_page_cache(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fcntl.fcntl

    def no_direct(fd: int, command: int, arg: Any = 0) -> Any:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, command, arg)

    monkeypatch.setattr(blobfile.fcntl, "fcntl", no_direct)
    path.write_bytes(BLOB)
    reader = BlobReader(path)

    assert not reader.direct
    assert _read_all(reader, 1 << 20) == BLOB


def test_a_direct_read_the_filesystem_refuses_goes_on_through_the_page_cache(
    direct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_path.write_bytes(BLOB)
    real = os.preadv
    calls = []

    def refuse_second(fd: int, buffers: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(blobfile.os, "preadv", refuse_second)
    reader = BlobReader(direct_path)
    data = reader.read(1 << 20) + reader.read(1 << 20)

    assert not reader.direct
    assert data + _read_all(reader, 1 << 20) == BLOB


def test_read_buffers_are_kept_for_the_next_reader(direct_path: Path) -> None:
    direct_path.write_bytes(BLOB[:5000])
    first = BlobReader(direct_path)
    buffer = first._buffer
    first.close()
    second = BlobReader(direct_path)

    assert second._buffer is buffer
    second.close()


def test_the_last_partial_block_is_read_past_the_page_cache_too(direct_path: Path) -> None:
    direct_path.write_bytes(BLOB)  # its last block is partial
    reader = BlobReader(direct_path)
    while reader.read(1 << 20):
        pass

    assert reader.direct
    reader.close()


def test_a_direct_read_failing_with_a_disk_error_raises_it(
    direct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_path.write_bytes(BLOB)

    def eio(*args: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobfile.os, "preadv", eio)
    reader = BlobReader(direct_path)
    with pytest.raises(OSError) as failed:
        reader.read(1 << 20)
    reader.close()

    assert failed.value.errno == errno.EIO


# A push's reads (and a save's).


@pytest.fixture
def stored(direct_path: Path) -> StoredBlob:
    direct_path.write_bytes(BLOB)
    return StoredBlob(sha256_digest(BLOB), len(BLOB), direct_path)


@pytest.mark.anyio
async def test_a_push_reads_a_stored_blob_whole_with_the_next_read_started_ahead(
    stored: StoredBlob,
) -> None:
    pieces = []
    async with stored.reading() as reading:
        while piece := await reading.read():
            pieces.append(piece)
            assert reading._ahead is not None  # the next one is being read meanwhile

    assert b"".join(pieces) == BLOB


@pytest.mark.anyio
async def test_a_push_cancelled_mid_read_closes_the_blob_once_its_read_has_ended(
    stored: StoredBlob,
) -> None:
    fds = _open_fds()
    with anyio.CancelScope() as scope:
        async with stored.reading() as reading:
            await reading.read()
            scope.cancel()
            await reading.read()

    assert scope.cancelled_caught
    assert reading._ahead is not None
    assert reading._ahead.done()
    assert _open_fds() == fds


@pytest.mark.anyio
async def test_a_push_cancelled_mid_read_closes_the_blob_only_after_that_read(
    stored: StoredBlob, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release, order = threading.Event(), threading.Event(), []
    real_read, real_close = BlobReader.read, BlobReader.close

    def read(self: BlobReader, size: int) -> bytes:
        started.set()
        assert release.wait(5)
        order.append("read")
        return real_read(self, size)

    def close(self: BlobReader) -> None:
        order.append("close")
        real_close(self)

    monkeypatch.setattr(BlobReader, "read", read)
    monkeypatch.setattr(BlobReader, "close", close)
    with anyio.CancelScope() as scope:
        async with stored.reading() as reading, anyio.create_task_group() as tasks:
            tasks.start_soon(reading.read)
            await anyio.to_thread.run_sync(started.wait)
            scope.cancel()
            threading.Timer(0.2, release.set).start()

    assert order == ["read", "close"]


@pytest.mark.anyio
async def test_a_push_cancelled_while_its_read_waits_for_a_thread_calls_the_read_off(
    stored: StoredBlob,
) -> None:
    fds = _open_fds()
    busy = threading.Event()
    for _ in range(6):  # every reading thread taken
        push_layers._READ_AHEAD.submit(busy.wait, 5)
    with anyio.move_on_after(0.1) as scope:
        async with stored.reading() as reading:
            await reading.read()
    busy.set()

    assert scope.cancelled_caught
    assert reading._ahead is not None
    assert reading._ahead.cancelled()
    assert _open_fds() == fds


@pytest.mark.anyio
async def test_a_read_after_one_called_off_reads_again(stored: StoredBlob) -> None:
    busy = threading.Event()
    for _ in range(6):
        push_layers._READ_AHEAD.submit(busy.wait, 5)
    async with stored.reading() as reading:
        with anyio.move_on_after(0.1):
            await reading.read()
        busy.set()

        assert await reading.read() == BLOB[: 1 << 20]


@pytest.mark.anyio
async def test_a_disk_error_in_the_read_ahead_is_raised_by_the_next_read(
    stored: StoredBlob, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.preadv

    def fails_after_the_first(fd: int, buffers: Any, offset: int) -> int:
        if offset:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, buffers, offset)

    monkeypatch.setattr(blobfile.os, "preadv", fails_after_the_first)
    async with stored.reading() as reading:
        await reading.read()
        with pytest.raises(OSError) as failed:
            await reading.read()

    assert failed.value.errno == errno.EIO


@pytest.mark.anyio
@pytest.mark.parametrize("whole", [True, False], ids=["read whole", "cut short"])
async def test_a_saved_blob_closes_its_file(stored: StoredBlob, whole: bool) -> None:
    fds = _open_fds()
    entry = save._Entry("blobs/sha256/x", stored.size, path=stored.path, digest=stored.digest)
    pieces = save._blob_pieces(entry)
    if whole:
        assert b"".join([piece async for piece in pieces]) == BLOB
    else:
        await pieces.__anext__()
        await pieces.aclose()

    assert _open_fds() == fds
