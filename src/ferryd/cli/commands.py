"""`ferryd serve` runs the daemon; every other command is a client of its socket."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import io
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from ferryd import __version__
from ferryd.cli import archives, login
from ferryd.cli.client import Client, DaemonError, answer_fields, list_field, text_field
from ferryd.cli.display import StreamError, drain, finished, pull_done, push_done, show
from ferryd.units import human_size

if TYPE_CHECKING:
    from ferryd.oci.reference import Reference


class UsageError(Exception):
    """The command line names something that cannot be: said before any request."""


def _reference(text: str, *, default_tag: bool = True) -> Reference:
    from ferryd.errors import InvalidReferenceError
    from ferryd.oci.reference import parse_reference

    try:
        return parse_reference(text, default_tag=default_tag)
    except InvalidReferenceError as exc:
        raise UsageError(str(exc)) from None


class StdoutError(Exception):
    """A write to stdout failed: a full disk, an I/O error, no stdout at all."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    given = sys.stdin, sys.stdout
    # Started without them (`<&-`, `>&-`), Python has None for both, and print() to None
    # drops the text: `images` printed nothing and exited 0. No stdin reads as empty;
    # no stdout fails each write, as the closed descriptor would.
    sys.stdin = sys.stdin or io.TextIOWrapper(io.BytesIO())
    stdout = sys.stdout or io.TextIOWrapper(_NoStdout(), write_through=True)
    sys.stdout = cast(TextIO, _Stdout(stdout))
    try:
        parsed: list[argparse.Namespace] = []
        # What argparse prints itself (`--help`, `--version`) goes to the same stdout:
        # argparse drops an OSError of its write, a StdoutError it does not.
        status = _run(lambda: _parse(parser, argv, parsed))
        if parsed and parsed[0].command == "serve":
            # The daemon logs to stdout for as long as it runs: what a failed write
            # there means is for the daemon to decide, not a client command's error.
            sys.stdin, sys.stdout = given
            return _run(lambda: _command(parsed[0]))
        if parsed:
            status = _run(lambda: _command(parsed[0]))
        # What stdout still buffers is written here, where a failure can be said: at
        # the interpreter's exit it is a Python message and status 120 after a success.
        flushed = _run(_flush_stdout)
        return status or flushed
    finally:
        sys.stdin, sys.stdout = given


def _parse(
    parser: argparse.ArgumentParser, argv: list[str] | None, parsed: list[argparse.Namespace]
) -> int:
    """The command line, into `parsed` when there is a command to run; else the status
    to exit with (argparse's own exits: `--help`, `--version`, a usage error)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's status: an int, or None for 0
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 2
    parsed.append(args)
    return 0


def _command(args: argparse.Namespace) -> int:
    result: int = args.handler(args)
    return result


def _run(command: Callable[[], int]) -> int:
    try:
        return command()
    except (DaemonError, StreamError, UsageError) as exc:
        print(str(exc) if isinstance(exc, DaemonError) else f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ferryd events | head`): stop as a Unix tool stopped by
        # SIGPIPE would, without a traceback, nor another error when stdout is flushed.
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except StdoutError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        _drop_stdout()
        return 1


def _flush_stdout() -> int:
    sys.stdout.flush()
    return 0


def _drop_stdout() -> None:
    """Send stdout to /dev/null: what its buffer still holds would fail again when the
    interpreter flushes it at exit. A stdout with no descriptor (a test's capture, no
    stdout at all) holds nothing that would."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Stdout:
    """sys.stdout for a client command: a failed write is a StdoutError, which main says
    as such, rather than an OSError from the middle of a command (which a command that
    catches OSError for its own files could take for one of theirs). BrokenPipeError
    stays one: the reader left, which is no error of ours."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _write_failed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _write_failed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _write_failed(exc: OSError) -> StdoutError:
    return StdoutError(f"cannot write stdout: {exc.strerror or exc}")


class _NoStdout(io.RawIOBase):
    """stdout when the command was started without one: each write fails."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.EBADF, "it is closed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferryd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ferryd {__version__}")
    parser.add_argument(
        "-H", "--host", help="daemon socket (unix://PATH); default $FERRYD_HOST or the system one"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--root", help="store directory (default /var/lib/ferryd)")
    serve.add_argument(
        "--socket", help="Unix socket to listen on (default /run/ferryd/ferryd.sock)"
    )
    serve.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a registry to reach without TLS verification or over plain HTTP (repeatable)",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["json", "console"])
    serve.set_defaults(handler=_serve)

    pull = commands.add_parser("pull", help="pull an image from a registry")
    pull.add_argument("reference")
    pull.add_argument(
        "--platform",
        help="os/arch[/variant] (default: the daemon's); of a multi-platform image, several "
        "separated by commas (linux/amd64,linux/arm64)",
    )
    pull.add_argument(
        "--all-platforms",
        action="store_true",
        help="of a multi-platform image, every platform (and their attestations)",
    )
    pull.add_argument("-q", "--quiet", action="store_true", help="print only the image reference")
    pull.add_argument("-a", "--all-tags", action="store_true", help="every tag of the repository")
    pull.set_defaults(handler=_pull)

    push = commands.add_parser("push", help="push an image (or every tag of a repository)")
    push.add_argument("reference")
    push.add_argument("-q", "--quiet", action="store_true", help="print only the digest(s)")
    push.add_argument(
        "--platform",
        help="of a multi-platform image, push only this platform's image (os/arch[/variant]), "
        "as a single-platform manifest",
    )
    push.add_argument(
        "--reduced-index",
        action="store_true",
        help="of a multi-platform image some of whose platforms are not stored, push an index "
        "of the stored ones (a new index: its digest is not the original's)",
    )
    push.set_defaults(handler=_push)

    tag = commands.add_parser("tag", help="give an image another name")
    tag.add_argument("source")
    tag.add_argument("target")
    tag.set_defaults(handler=_tag)

    rmi = commands.add_parser("rmi", help="untag images, removing what nothing names")
    rmi.add_argument("reference", nargs="+")
    rmi.add_argument("-f", "--force", action="store_true", help="remove by ID even if tagged")
    rmi.set_defaults(handler=_rmi)

    from ferryd.cli import listing  # it imports this module's helpers

    listing.add_commands(commands)  # images, history, prune, df

    inspect = commands.add_parser("inspect", help="show an image's details as JSON")
    inspect.add_argument("reference", nargs="+")
    inspect.set_defaults(handler=_inspect)

    ps = commands.add_parser("ps", help="list running downloads and uploads")
    ps.set_defaults(handler=_ps)

    events = commands.add_parser("events", help="show image events as they happen")
    events.add_argument("--since", help="replay events since: Unix time, RFC 3339 or 10m/2h")
    events.add_argument("--until", help="stop at: Unix time, RFC 3339 or 10m/2h ago")
    events.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="event=pull, image=NAME, type=image (repeatable)",
    )
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(handler=_events)

    archives.add_commands(commands)  # save, load
    login.add_commands(commands)  # login, logout

    fsck = commands.add_parser(
        "fsck",
        help="check the store; exit 0 clean, 1 problems found, 2 could not check",
        description="Check every blob, layer, image, manifest and reference of the store, "
        "and look for leftovers. Without --root the running daemon checks its store.",
    )
    fsck.add_argument(
        "--root", help="check the store in DIR yourself (the daemon using it must be stopped)"
    )
    fsck.add_argument("--repair", action="store_true", help="remove what is broken or unreferenced")
    fsck.set_defaults(handler=_fsck)

    reload = commands.add_parser(
        "reload",
        help="make the running daemon read its config again (SIGHUP)",
        description="Send SIGHUP to the daemon: it reads its config file again and applies "
        "what can change live; its log says what changed (daemon.reloaded) or why nothing "
        "did (daemon.reload_failed). The unit's ExecReload= runs `ferryd reload $MAINPID`.",
    )
    reload.add_argument(
        "pid", nargs="?", help="the daemon's PID (default: the one `ferryd serve` running)"
    )
    reload.set_defaults(handler=_reload)
    return parser


def _serve(args: argparse.Namespace) -> int:
    # SIGHUP's default action would end the daemon. Ignored until the config file is
    # read (that read comes after the HUP: nothing to apply), then held from just before
    # it (reload.Hangups): a HUP during start-up gets its reload once the daemon is ready.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from ferryd.daemon.reload import hangups
    from ferryd.daemon.settings import Settings, load_settings
    from ferryd.errors import ConfigError, FerrydError

    hangups.catch()
    overrides: dict[str, object] = {
        "root": args.root,
        "socket": args.socket,
        "insecure_registries": args.insecure_registry or None,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    log_format = args.log_format or "json"
    try:
        settings = load_settings(args.config, overrides)
        log_format = settings.log_format
        import anyio

        from ferryd.daemon import main as daemon

        def reload() -> Settings:
            return load_settings(args.config, overrides)

        anyio.run(daemon.run, settings, reload, backend_options={"use_uvloop": True})
    except ConfigError as exc:
        return _start_failed(str(exc), 2, log_format)
    except FerrydError as exc:
        return _start_failed(str(exc), 1, log_format)
    except OSError as exc:
        return _start_failed(f"{exc.filename or ''}: {exc.strerror or exc}", 1, log_format)
    finally:
        # Ignored again for the interpreter's exit, which gives a signal caught by a
        # Python handler its default action back.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return 0


def _start_failed(reason: str, status: int, log_format: str) -> int:
    """One log line at error level that says why (a journal read with `jq` shows it:
    no plain text beside the JSON), then the exit status: 2 for a configuration that
    must be fixed (systemd then does not restart in a loop), 1 otherwise."""
    import structlog

    from ferryd.daemon import logs

    logs.configure("info", "console" if log_format == "console" else "json")
    structlog.get_logger("ferryd.daemon").error(
        "daemon.start_failed", error=reason, exit_status=status
    )
    return status


def _pull(args: argparse.Namespace) -> int:
    reference = _reference(args.reference, default_tag=not args.all_tags)
    if args.all_tags and (reference.tag is not None or reference.digest is not None):
        raise UsageError("tag can't be used with --all-tags/-a")
    params = {"fromImage": str(reference)}
    platforms = [p.strip() for p in (args.platform or "").split(",") if p.strip()]
    if args.all_platforms and platforms:
        raise UsageError("--all-platforms pulls every platform: leave --platform out")
    if len(platforms) == 1:
        params["platform"] = platforms[0]
    elif platforms:
        params["platforms"] = ",".join(platforms)
    if args.all_platforms:
        params["all-platforms"] = "1"
    headers = {"X-Registry-Auth": _registry_auth(reference.domain)}
    messages = finished(
        Client(args.host).stream("POST", "/images/create", params, headers),
        pull_done,
        _cut("pull", args.reference),
    )
    if args.quiet:
        drain(messages)
        print(reference.familiar)
    else:
        show(messages)
    return 0


def _push(args: argparse.Namespace) -> int:
    reference = _reference(args.reference, default_tag=False)
    if reference.digest is not None:
        raise UsageError("push takes a tag, not a digest")
    params = {"tag": reference.tag} if reference.tag else {}
    if args.platform and args.reduced_index:
        raise UsageError("--platform pushes one image: leave --reduced-index out")
    if args.platform:
        params["platform"] = args.platform
    if args.reduced_index:
        params["reduced-index"] = "1"
    headers = {"X-Registry-Auth": _registry_auth(reference.domain)}
    path = f"/images/{reference.name}/push"
    messages = finished(
        Client(args.host).stream("POST", path, params, headers),
        push_done,
        _cut("push", args.reference),
    )
    if args.quiet:
        auxes = drain(messages)
        # Each read before any is printed: a malformed one is said, not a traceback.
        with answer_fields(f"POST {path}"):
            digests = [text_field(aux, "Digest") for aux in auxes]
        for digest in digests:
            print(digest)
    else:
        show(messages)
    return 0


def _tag(args: argparse.Namespace) -> int:
    target = _reference(args.target)
    if target.digest is not None or target.tag is None:
        raise UsageError("the target must be a tag, not a digest")
    params = {"repo": target.name, "tag": target.tag}
    Client(args.host).read("POST", f"/images/{args.source}/tag", params)
    return 0


def _rmi(args: argparse.Namespace) -> int:
    client = Client(args.host)
    failed = False
    for name in args.reference:
        params = {"force": "1"} if args.force else {}
        try:
            records = client.json_objects("DELETE", f"/images/{name}", params)
        except DaemonError as exc:
            print(str(exc), file=sys.stderr)
            failed = True
            continue
        for record in records:
            for key, value in record.items():
                print(f"{key}: {value}")
    return 1 if failed else 0


def _cut(action: str, reference: str) -> str:
    return (
        f"the {action} did not finish: the daemon's answer ended before its last status "
        f"(the connection was cut, or the daemon stopped); run `ferryd {action} {reference}` "
        "again"
    )


def _print_table(table: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("   ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())


def _ps(args: argparse.Namespace) -> int:
    """The pulls and pushes running (from the moment they were asked for, with how many
    of their layers are done), then the transfers moving their layers."""
    client = Client(args.host)
    jobs = client.json_objects("GET", "/jobs")
    rows = client.json_objects("GET", "/transfers")
    with answer_fields("GET /jobs"):
        job_table = [("JOB", "ACTION", "PHASE", "LAYERS", "STARTED", "REFERENCE")] + [
            (
                text_field(job, "ID"),
                text_field(job, "Action"),
                text_field(job, "Phase"),
                _layers_done(job["Layers"]),
                _ago(job["Started"]),
                text_field(job, "Reference"),
            )
            for job in jobs
        ]
    with answer_fields("GET /transfers"):
        table = [("ACTION", "ID", "STATUS", "PROGRESS", "CLIENTS", "STARTED", "NAME")] + [
            (
                text_field(row, "Action"),
                text_field(row, "ID"),
                text_field(row, "Status"),
                _progress(row["Current"], row["Total"]),
                str(row["Watchers"]),
                _ago(row["Started"]),
                text_field(row, "Name"),
            )
            for row in rows
        ]
    if jobs:
        _print_table(job_table)
        print()
    _print_table(table)
    return 0


# A layer's last state when nothing more is to be done for it, pulled or pushed.
_LAYER_DONE = ("Pull complete", "Already exists", "Pushed", "Layer already exists")


def _layers_done(layers: list[dict[str, Any]]) -> str:
    statuses = [text_field(layer, "Status") for layer in layers]
    done = sum(status in _LAYER_DONE or status.startswith("Mounted from") for status in statuses)
    return f"{done}/{len(layers)}" if layers else "-"


def _progress(current: int | None, total: int | None) -> str:
    if current is None:
        return "-"
    if not total:
        return human_size(current)
    return f"{human_size(current)}/{human_size(total)} ({100 * current // total}%)"


def _events(args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    for name in ("since", "until"):
        value = getattr(args, name)
        if value:
            params[name] = _timestamp(value, name)
    filters: dict[str, list[str]] = {}
    for text in args.filter:
        key, equals, value = text.partition("=")
        if not equals or not key or not value:
            raise UsageError(f"bad filter {text!r}: expected KEY=VALUE, e.g. event=pull")
        filters.setdefault(key, []).append(value)
    if filters:
        params["filters"] = json.dumps(filters)
    for event in Client(args.host).stream("GET", "/events", params):
        if args.json:
            print(json.dumps(event), flush=True)
            continue
        with answer_fields("GET /events"):
            line = _event_line(event)
        print(line, flush=True)
    return 0


def _event_line(event: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(event["timeNano"] / 1e9, datetime.UTC).isoformat(
        timespec="microseconds"
    )
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(event["Actor"]["Attributes"].items()))
    return f"{when} {event['Type']} {event['Action']} {event['Actor']['ID']} ({attributes})"


_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)(?P<unit>s|m|h)")


def _timestamp(text: str, name: str) -> str:
    """Unix seconds, an RFC 3339 time, or a duration ago (`10m`), as Unix seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return text
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        seconds = float(duration["amount"]) * {"s": 1, "m": 60, "h": 3600}[duration["unit"]]
        return f"{time.time() - seconds:.9f}"
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--{name} {text!r}: expected Unix seconds, an RFC 3339 time or a duration (10m)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_local_zone(moment))
    return f"{moment.timestamp():.9f}"


def _local_zone(moment: datetime.datetime) -> datetime.tzinfo | None:
    """The local zone at `moment`, as docker takes a time without one. Python finds it
    through the times a day either side, which are out of its calendar (years 1 to
    9999) at 0001-01-01 and 9999-12-31: there, the zone two days inward."""
    inward = datetime.timedelta(days=2 if moment.year == 1 else -2)
    try:
        return moment.astimezone().tzinfo
    except (ValueError, OverflowError):
        return (moment + inward).astimezone().tzinfo


def _reload(args: argparse.Namespace) -> int:
    from ferryd.cli.reload import ReloadError, reload_daemon

    try:
        reload_daemon(args.pid)
    except ReloadError as exc:
        print(f"ferryd reload: {exc}", file=sys.stderr)
        return 1
    return 0


def _fsck(args: argparse.Namespace) -> int:
    """Exit 0 when the store is clean, 1 when problems were found (repaired or not), 2
    when it could not be checked."""
    if args.root:
        report = _fsck_stopped(Path(args.root), args.repair)
        if report is None:
            return 2
        lines, found = _fsck_lines(report)
    else:
        params = {"repair": "1"} if args.repair else {}
        try:
            report = Client(args.host).json_object("POST", "/fsck", params)
            with answer_fields("POST /fsck"):
                lines, found = _fsck_lines(report)
        except DaemonError as exc:
            # Not 1, which says the store has problems: what it has is not known.
            print(str(exc), file=sys.stderr)
            return 2
    print("\n".join(lines))
    return 1 if found else 0


def _fsck_lines(report: dict[str, Any]) -> tuple[list[str], int]:
    """What to print of a report (all of it before any is printed: a daemon's answer
    may be malformed), and how many problems it found."""
    problems, removed, kept = (list_field(report, key) for key in ("Problems", "Removed", "Kept"))
    lines = [f"{problem['Kind']}: {problem['Message']}" for problem in problems]
    lines += [f"removed {item['Kind']} {item['Subject']}" for item in removed]
    lines += [f"kept {item['Kind']}: {item['Message']}" for item in kept]
    if report["UnusedLayers"]:
        lines.append(
            f"info: {report['UnusedLayers']} layers no image uses "
            "(not a problem: the next pull of an image on them reuses them)"
        )
    checked = ", ".join(
        _counted(count, _SINGULAR.get(what, what.lower().removesuffix("s")))
        for what, count in report["Checked"].items()
    )
    verdict = _counted(len(problems), "problem") if problems else "clean"
    lines.append(f"fsck: checked {checked} in {report['Seconds']:.2f} s: {verdict}")
    return lines, len(problems)


_SINGULAR = {"Indexes": "index"}


def _counted(count: int, noun: str) -> str:
    plural = "es" if noun.endswith("x") else "s"
    return f"{count} {noun}{'' if count == 1 else plural}"


def _fsck_stopped(root: Path, repair: bool) -> dict[str, Any] | None:
    """Open the store in `root` (its lock tells whether a daemon has it) and check it."""
    from ferryd.errors import FerrydError, StoreInUseError
    from ferryd.store import Store
    from ferryd.store.fsck import check
    from ferryd.store.store import DB_NAME

    if not (root / DB_NAME).is_file():
        print(f"ferryd: there is no store in {root} (no {DB_NAME})", file=sys.stderr)
        return None
    try:
        store = Store(root)
    except StoreInUseError:
        print(
            f"ferryd: the store in {root} is in use by a running ferryd daemon: run "
            f"`ferryd fsck{' --repair' if repair else ''}` without --root to have the daemon "
            "check it (-H or $FERRYD_HOST names its socket)",
            file=sys.stderr,
        )
        return None
    except (FerrydError, OSError) as exc:
        print(f"ferryd: {exc}", file=sys.stderr)
        return None
    try:
        return check(store, repair=repair).to_json()
    except (FerrydError, OSError) as exc:
        print(f"ferryd: {exc}", file=sys.stderr)
        return None
    finally:
        store.close()


def _inspect(args: argparse.Namespace) -> int:
    client = Client(args.host)
    found: list[Any] = []
    failed = False
    for name in args.reference:
        try:
            found.append(client.get_json(f"/images/{name}/json"))
        except DaemonError as exc:
            print(str(exc), file=sys.stderr)
            failed = True
    print(json.dumps(found, indent=4))
    return 1 if failed else 0


def _registry_auth(domain: str) -> str:
    """The caller's own docker login for `domain`, sent as the docker CLI sends it: from
    its credential helper or `auths` in `$DOCKER_CONFIG/config.json` (`ferryd login`
    keeps it there); a login that cannot be read is said, and the request goes without."""
    from ferryd.cli.dockerconfig import registry_auth

    header, warning = registry_auth(domain)
    if warning:
        print(warning, file=sys.stderr)
    return header


def _image_id(image_id: str, full: bool) -> str:
    if not isinstance(image_id, str):  # of a daemon's answer, read in answer_fields
        raise TypeError(f"an image ID is not a string: {image_id!r:.60}")
    return image_id if full else image_id.removeprefix("sha256:")[:12]


def _ago(created: int) -> str:
    seconds = max(0, time.time() - created)
    for unit, size in (
        ("years", 31536000),
        ("months", 2592000),
        ("weeks", 604800),
        ("days", 86400),
        ("hours", 3600),
        ("minutes", 60),
    ):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit} ago"
    return "Less than a second ago" if seconds < 1 else f"{int(seconds)} seconds ago"
