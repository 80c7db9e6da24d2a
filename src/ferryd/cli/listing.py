"""`ferryd images`, `history`, `prune` and `df`: what the store holds, printed as the
docker CLI prints it (rows per repository and tag, `<none>` for what has no tag)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ferryd.cli.client import Client, answer_fields, list_field, strings_field, text_field
from ferryd.cli.commands import UsageError, _ago, _image_id, _print_table
from ferryd.units import human_size


def add_commands(commands: Any) -> None:
    """Add the commands to `commands` (the parser's subparsers)."""
    images = commands.add_parser("images", help="list images")
    images.add_argument("reference", nargs="?", metavar="REPO[:TAG]", help="only these names")
    _filter_option(images, "dangling=true, reference=GLOB, label=K[=V], before=, since=, until=")
    images.add_argument(
        "-a", "--all", action="store_true", help="all images (ferryd has no others)"
    )
    images.add_argument("--digests", action="store_true", help="show digests")
    images.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    images.add_argument("--no-trunc", action="store_true", help="full image IDs")
    images.add_argument(
        "--tree",
        action="store_true",
        help="each image with its platforms' manifests and sizes (-a: those not stored and "
        "attestations too)",
    )
    images.set_defaults(handler=_images)

    history = commands.add_parser("history", help="show how an image was built")
    history.add_argument("reference", metavar="REF")
    history.add_argument("--no-trunc", action="store_true", help="do not cut the output")
    history.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    history.set_defaults(handler=_history)

    prune = commands.add_parser(
        "prune",
        help="remove images without a tag (-a: every image)",
        description="Remove the images no tag names (with -a, every image: ferryd has no "
        "containers to keep one in use), their layers and blobs.",
    )
    prune.add_argument("-a", "--all", action="store_true", help="every image, tagged or not")
    _filter_option(prune, "until=TIME, label=K[=V], label!=K[=V]")
    prune.add_argument("--force", action="store_true", help="do not ask for confirmation")
    prune.set_defaults(handler=_prune)

    df = commands.add_parser("df", help="show how much space images take")
    df.set_defaults(handler=_df)


def _filter_option(parser: argparse.ArgumentParser, examples: str) -> None:
    parser.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{examples} (repeatable)",
    )


def _filters(given: Sequence[str], **extra: str) -> dict[str, list[str]]:
    """`-f KEY=VALUE`… as the API's `filters` (a value may hold `=`: label=a=b)."""
    filters: dict[str, list[str]] = {}
    for text in given:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise UsageError(f"bad filter {text!r}: expected KEY=VALUE, e.g. dangling=true")
        filters.setdefault(key, []).append(value)
    for key, value in extra.items():
        filters.setdefault(key, []).append(value)
    return filters


def _images(args: argparse.Namespace) -> int:
    extra = {"reference": args.reference} if args.reference else {}
    params = {"filters": json.dumps(_filters(args.filter, **extra))}
    if args.all:
        params["all"] = "1"
    if args.tree:
        params["manifests"] = "1"
    rows = Client(args.host).json_objects("GET", "/images/json", params)
    if args.quiet:
        with answer_fields("GET /images/json"):
            ids = [_image_id(row["Id"], args.no_trunc) for row in rows]
        for image_id in ids:
            print(image_id)
        return 0
    with answer_fields("GET /images/json"):
        if args.tree:
            table = _tree(rows, every=args.all, full=args.no_trunc)
        else:
            table = _table(rows, digests=args.digests, full=args.no_trunc)
    _print_table(table)
    return 0


def _table(rows: list[dict[str, Any]], *, digests: bool, full: bool) -> list[tuple[str, ...]]:
    header = ("REPOSITORY", "TAG", *(("DIGEST",) if digests else ()), "IMAGE ID")
    table: list[tuple[str, ...]] = [(*header, "CREATED", "SIZE")]
    for row in rows:
        shown = (_image_id(row["Id"], full), _ago(row["Created"]))
        size = human_size(row["Size"], 3)
        for repository, tag, digest in _names(row, digests):
            table.append((repository, tag, *((digest,) if digests else ()), *shown, size))
    return table


def _tree(rows: list[dict[str, Any]], *, every: bool, full: bool) -> list[tuple[str, ...]]:
    """`docker image ls --tree`: per image its names, its ID and the bytes it takes
    (disk usage: content and unpacked; content size: the blobs), then one line per
    platform with its manifest's digest; platforms not stored and attestations only with
    `every` (-a)."""
    table: list[tuple[str, ...]] = [("IMAGE", "ID", "DISK USAGE", "CONTENT SIZE", "EXTRA")]
    for row in rows:
        manifests = row.get("Manifests") or []
        shown = [m for m in manifests if every or (m.get("Available") and m.get("Kind") == "image")]
        total = sum(m["Size"]["Total"] for m in manifests if m.get("Available"))
        content = sum(m["Size"]["Content"] for m in manifests if m.get("Available"))
        names = (
            strings_field(row, "RepoTags")
            or [
                name.partition("@")[0] + "@" + name.partition("@")[2][:19]
                for name in strings_field(row, "RepoDigests")
            ]
            or ["<untagged>"]
        )
        table.append(
            (
                names[0],
                _image_id(row["Id"], full),
                human_size(total or row["Size"], 3),
                human_size(content, 3),
                "",
            )
        )
        table += [(name, "", "", "", "") for name in names[1:]]
        for position, manifest in enumerate(shown):
            branch = "└─" if position == len(shown) - 1 else "├─"
            table.append(
                (
                    f"{branch} {_manifest_label(manifest)}",
                    _image_id(manifest["ID"], full),
                    human_size(manifest["Size"]["Total"], 3),
                    human_size(manifest["Size"]["Content"], 3),
                    "" if manifest.get("Available") else "not stored",
                )
            )
    return table


def _manifest_label(manifest: dict[str, Any]) -> str:
    if manifest.get("Kind") == "attestation":
        return f"attestation of {_image_id(manifest['AttestationData']['For'], False)}"
    platform = (manifest.get("ImageData") or {}).get("Platform") or {}
    if not platform:
        return str(manifest.get("Kind", "unknown"))
    parts = [platform.get("os", ""), platform.get("architecture", "")]
    return "/".join(parts + ([platform["variant"]] if platform.get("variant") else []))


def _names(row: dict[str, Any], digests: bool) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) rows for one image, as the docker CLI makes them: a row
    per tag (per tag and digest with --digests), a `<none>` tag for a repository known
    only by digest, `<none>` `<none>` for an image nothing names."""
    tags: dict[str, list[str]] = {}
    by_digest: dict[str, list[str]] = {}
    for name in strings_field(row, "RepoTags"):
        repository, _, tag = name.rpartition(":")
        if repository and "/" not in tag:
            tags.setdefault(repository, []).append(tag)
    for name in strings_field(row, "RepoDigests"):
        repository, at, digest = name.partition("@")
        if at:
            by_digest.setdefault(repository, []).append(digest)
    if not tags and not by_digest:
        return [("<none>", "<none>", "<none>")]
    names = []
    for repository in sorted(tags):
        repository_digests = by_digest.pop(repository, []) if digests else []
        by_digest.pop(repository, None)
        for tag in sorted(tags[repository]):
            names += [(repository, tag, d) for d in repository_digests] or [
                (repository, tag, "<none>")
            ]
    for repository in sorted(by_digest):
        if digests:
            names += [(repository, "<none>", d) for d in by_digest[repository]]
        else:
            names.append((repository, "<none>", ""))
    return names


def _history(args: argparse.Namespace) -> int:
    path = f"/images/{args.reference}/history"
    steps = Client(args.host).json_objects("GET", path)
    if args.quiet:
        with answer_fields(f"GET {path}"):
            ids = [_history_id(step["Id"], args.no_trunc) for step in steps]
        for step_id in ids:
            print(step_id)
        return 0
    with answer_fields(f"GET {path}"):
        header: tuple[str, ...] = ("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT")
        table = [header, *(_step(step, args.no_trunc) for step in steps)]
    _print_table(table)
    return 0


def _step(step: dict[str, Any], full: bool) -> tuple[str, ...]:
    created_by = text_field(step, "CreatedBy").replace("\t", " ")
    return (
        _history_id(step["Id"], full),
        _ago(step["Created"]),
        created_by if full else _ellipsis(created_by, 45),
        human_size(step["Size"], 3),
        text_field(step, "Comment"),
    )


def _history_id(image_id: str, full: bool) -> str:
    return image_id if image_id == "<missing>" else _image_id(image_id, full)


def _ellipsis(text: str, width: int) -> str:
    """docker's Ellipsis: cut to `width` characters, the last one `…`."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _prune(args: argparse.Namespace) -> int:
    filters = _filters(args.filter, dangling="false" if args.all else "true")
    what = "every image" if args.all else "every image without a tag (dangling)"
    if not args.force and not sys.stdin.isatty():
        print(
            f"ferryd prune would remove {what}: give --force to do it without a terminal "
            "to confirm on",
            file=sys.stderr,
        )
        return 1
    if not args.force and not _confirmed(what):
        return 0  # as `docker image prune` answered no: cancelled, which is no failure
    params = {"filters": json.dumps(filters)}
    report = Client(args.host).json_object("POST", "/images/prune", params)
    with answer_fields("POST /images/prune"):
        deleted = [_deleted(record) for record in report.get("ImagesDeleted") or []]
        total = f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}"
    if deleted:
        print("Deleted Images:")
        for line in deleted:
            print(line)
        print()
    print(total)
    return 0


def _deleted(record: dict[str, Any]) -> str:
    if record.get("Untagged"):
        return f"untagged: {record['Untagged']}"
    return f"deleted: {record['Deleted']}"


def _confirmed(what: str) -> bool:
    """Ask on the terminal, as `docker image prune` does: the end of input (Ctrl-D) is
    no, as it is to docker."""
    try:
        answer = input(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
        )
    except EOFError:
        print()  # the prompt's line ends here, not in the shell's next prompt
        return False
    return answer.strip().lower() in ("y", "yes")


def _df(args: argparse.Namespace) -> int:
    usage = Client(args.host).json_object("GET", "/system/df", {"type": "image"})
    with answer_fields("GET /system/df"):
        images = list_field(usage, "Images") if usage.get("Images") is not None else []
        size = usage.get("LayersSize") or 0
        row = ("Images", str(len(images)), "0", human_size(size), _reclaimable(size))
    _print_table([("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"), row])
    return 0


def _reclaimable(size: float) -> str:
    return f"{human_size(size)} (100%)" if size else human_size(0)
