"""Progress messages in docker's shape, the bar, and the Broadcast that fans them out.

In-process and deterministic: `update()`'s throttle reads a fake clock (the module's
`time` is replaced), never the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ferryd.daemon.api.streaming import _Backlog
from ferryd.distribution import progress
from ferryd.distribution.progress import (
    Broadcast,
    Message,
    progress_bar,
)

DIGEST = "sha256:" + "ab" * 32


@dataclass
class Recorder:
    """An output that keeps what it is given."""

    messages: list[Message] = field(default_factory=list)

    def write(self, message: Message) -> None:
        self.messages.append(message)


@dataclass
class Clock:
    """Stands in for the `time` module of progress.py: only `monotonic` is read."""

    now: float = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress, "time", fake)
    return fake


def downloading(current: int, total: int | None = 100) -> Message:
    return Message("Downloading", "abc123", current, total)


# -- Message.to_json -----------------------------------------------------------------


def test_message_with_progress_has_detail_bar_and_id() -> None:
    message = Message("Downloading", "abc123", 1_049_000, 3_624_000)
    assert message.to_json() == {
        "status": "Downloading",
        "progressDetail": {"current": 1_049_000, "total": 3_624_000},
        "progress": progress_bar(1_049_000, 3_624_000),
        "id": "abc123",
    }


def test_message_with_unknown_total_has_current_only_in_its_detail() -> None:
    assert Message("Downloading", "abc123", 5_000).to_json() == {
        "status": "Downloading",
        "progressDetail": {"current": 5_000},
        "progress": progress_bar(5_000, None),
        "id": "abc123",
    }


def test_layer_state_update_has_an_empty_progress_detail() -> None:
    # docker's progress.Update ("Pull complete", "Waiting", ...) carries {}.
    assert Message("Pull complete", "abc123").to_json() == {
        "status": "Pull complete",
        "progressDetail": {},
        "id": "abc123",
    }


def test_message_that_is_not_an_update_has_no_progress_detail() -> None:
    # docker's progress.Message ("Pulling from ...") has an id but no progressDetail.
    message = Message("Pulling from library/alpine", "latest", update=False)
    assert message.to_json() == {"status": "Pulling from library/alpine", "id": "latest"}


def test_message_without_id_is_its_status_alone() -> None:
    assert Message(f"Digest: {DIGEST}").to_json() == {"status": f"Digest: {DIGEST}"}


def test_aux_message_carries_only_its_payload() -> None:
    aux = {"Tag": "latest", "Digest": DIGEST, "Size": 528}
    assert Message("ignored", "abc123", aux=aux).to_json() == {"aux": aux}


def test_error_message_has_error_and_error_detail_and_nothing_else() -> None:
    message = Message("Downloading", "abc123", 1, 2, aux={"Tag": "x"}, error="manifest unknown")
    assert message.to_json() == {
        "errorDetail": {"message": "manifest unknown"},
        "error": "manifest unknown",
    }


# -- progress_bar --------------------------------------------------------------------


def test_progress_bar_draws_one_equals_sign_per_two_percent_then_an_arrow() -> None:
    bar, _, numbers = progress_bar(1_049_000, 3_624_000).partition("] ")
    # 1.049 / 3.624 = 28.9%: 14 signs (docker: int(28.9) / 2), then the arrow, then spaces.
    assert bar.startswith("[" + "=" * 14 + ">")
    assert bar[16:].strip(" ") == ""
    assert numbers == " 1.049MB/3.624MB"  # current right-aligned in 8 columns, as %8v


def test_progress_bar_rounds_the_filled_part_down() -> None:
    bar = progress_bar(99, 100)
    assert bar.count("=") == 49
    assert "=" * 49 + ">" in bar


def test_progress_bar_is_full_at_the_total_and_never_overflows() -> None:
    assert progress_bar(100, 100).count("=") == 50
    assert progress_bar(150, 100).count("=") == 50


def test_progress_bar_without_total_is_the_size_alone() -> None:
    assert progress_bar(1_049_000, None).strip() == "1.049MB"
    assert progress_bar(1_049_000, 0).strip() == "1.049MB"


def test_progress_bar_is_as_wide_as_dockers_and_keeps_its_arrow_when_full() -> None:
    assert progress_bar(1_049_000, 3_624_000) == (
        "[" + "=" * 14 + ">" + " " * 36 + "]  1.049MB/3.624MB"
    )
    assert progress_bar(3_624_000, 3_624_000) == "[" + "=" * 50 + ">]  3.624MB/3.624MB"


def test_progress_numbers_are_dockers_when_total_is_unknown_or_exceeded() -> None:
    assert progress_bar(1_049_000, None) == " 1.049MB"
    assert progress_bar(150, 100).endswith("] " + "    150B")


# -- Broadcast -----------------------------------------------------------------------


def test_broadcast_writes_each_message_to_every_attached_output() -> None:
    broadcast, first, second = Broadcast(), Recorder(), Recorder()
    broadcast.attach(first)
    broadcast.attach(second)
    messages = [downloading(10), downloading(20), Message("Download complete", "abc123")]
    for message in messages:
        broadcast.write(message)
    assert first.messages == messages
    assert second.messages == messages


def test_detached_output_gets_no_more_messages() -> None:
    broadcast, leaving, staying = Broadcast(), Recorder(), Recorder()
    broadcast.attach(leaving)
    broadcast.attach(staying)
    broadcast.write(downloading(10))
    broadcast.detach(leaving)
    broadcast.write(downloading(20))
    assert leaving.messages == [downloading(10)]
    assert staying.messages == [downloading(10), downloading(20)]


def test_output_attached_late_first_gets_the_latest_message() -> None:
    broadcast, late = Broadcast(), Recorder()
    broadcast.write(downloading(10))
    broadcast.write(downloading(20))
    broadcast.attach(late)
    assert late.messages == [downloading(20)]
    broadcast.write(downloading(30))
    assert late.messages == [downloading(20), downloading(30)]


def test_output_attached_before_any_message_gets_nothing_on_attach() -> None:
    broadcast, early = Broadcast(), Recorder()
    broadcast.attach(early)
    assert early.messages == []
    assert broadcast.last is None


def test_output_may_detach_itself_while_a_message_is_written() -> None:
    broadcast, after = Broadcast(), Recorder()

    class LeavesOnFirstMessage(Recorder):
        def write(self, message: Message) -> None:
            super().write(message)
            broadcast.detach(self)

    leaving = LeavesOnFirstMessage()
    broadcast.attach(leaving)
    broadcast.attach(after)
    broadcast.write(downloading(10))
    broadcast.write(downloading(20))
    assert leaving.messages == [downloading(10)]
    assert after.messages == [downloading(10), downloading(20)]


def test_moved_keeps_the_furthest_current_reported() -> None:
    broadcast = Broadcast()
    broadcast.write(downloading(70))
    broadcast.write(downloading(40))  # a retry that starts lower does not undo it
    broadcast.write(Message("Retrying in 1 second", "abc123"))
    broadcast.write(Message("Verifying Checksum", "abc123"))
    assert broadcast.moved == 70
    assert broadcast.last == Message("Verifying Checksum", "abc123")


# -- Broadcast.update: at most one message per 100 ms --------------------------------


def test_update_sends_at_most_one_message_per_100_ms(clock: Clock) -> None:
    broadcast, output = Broadcast(), Recorder()
    broadcast.attach(output)
    broadcast.update(downloading(10))  # at 1000 s
    clock.now = 1000.0625
    broadcast.update(downloading(20))  # 62.5 ms after the last one sent: held back
    clock.now = 1000.125
    broadcast.update(downloading(30))  # 125 ms after: sent
    clock.now = 1000.1875
    broadcast.update(downloading(40, None))  # an unknown total is throttled alike
    assert output.messages == [downloading(10), downloading(30)]


def test_update_counts_the_interval_from_the_last_message_sent(clock: Clock) -> None:
    broadcast, output = Broadcast(), Recorder()
    broadcast.attach(output)
    broadcast.update(downloading(10))
    for current in (20, 30, 40):  # each 62.5 ms after the one before
        clock.now += 0.0625  # exact in binary: no rounding at the boundary
        broadcast.update(downloading(current))
    # 30 comes 125 ms after 10 (the last sent), though only 62.5 ms after 20.
    assert output.messages == [downloading(10), downloading(30)]


def test_update_always_sends_the_final_message(clock: Clock) -> None:
    broadcast, output = Broadcast(), Recorder()
    broadcast.attach(output)
    broadcast.update(downloading(10))
    clock.now += 0.001
    broadcast.update(downloading(100, 100))
    assert output.messages == [downloading(10), downloading(100, 100)]


def test_update_held_back_is_still_the_latest_for_late_joiners_and_moved(clock: Clock) -> None:
    broadcast = Broadcast()
    broadcast.update(downloading(10))
    clock.now += 0.01
    broadcast.update(downloading(60))
    late = Recorder()
    broadcast.attach(late)
    assert late.messages == [downloading(60)]
    assert broadcast.moved == 60


def test_write_is_never_throttled(clock: Clock) -> None:
    broadcast, output = Broadcast(), Recorder()
    broadcast.attach(output)
    broadcast.update(downloading(10))
    broadcast.write(Message("Verifying Checksum", "abc123"))
    broadcast.write(Message("Download complete", "abc123"))
    assert [m.status for m in output.messages] == [
        "Downloading",
        "Verifying Checksum",
        "Download complete",
    ]


# -- outputs -------------------------------------------------------------------------


async def test_client_that_went_away_does_not_stop_messages_to_the_others() -> None:
    gone, staying = _Backlog(), _Backlog()
    broadcast = Broadcast()
    broadcast.attach(gone)
    broadcast.attach(staying)
    gone.end()  # its client left: what it is written is dropped
    broadcast.write(downloading(10))
    assert (gone.take_nowait(), staying.take_nowait()) == ([], [downloading(10)])
