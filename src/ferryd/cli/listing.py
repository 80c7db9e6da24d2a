"""`ferryd images`, `history`, `prune` and `df`: what the store holds, printed as the
docker CLI prints it (rows per repository and tag, `<none>` for what has no tag)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ferryd.cli.client import Client
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
    rows = Client(args.host).get_json("/images/json", params)
    if args.tree and not args.quiet:
        _print_table(_tree(rows, every=args.all, full=args.no_trunc))
        return 0
    if args.quiet:
        for row in rows:
            print(_image_id(row["Id"], args.no_trunc))
        return 0
    header = ("REPOSITORY", "TAG", *(("DIGEST",) if args.digests else ()), "IMAGE ID")
    table: list[tuple[str, ...]] = [(*header, "CREATED", "SIZE")]
    for row in rows:
        shown = (_image_id(row["Id"], args.no_trunc), _ago(row["Created"]))
        size = human_size(row["Size"], 3)
        for repository, tag, digest in _names(row, args.digests):
            table.append((repository, tag, *((digest,) if args.digests else ()), *shown, size))
    _print_table(table)
    return 0


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
            row.get("RepoTags")
            or [
                name.partition("@")[0] + "@" + name.partition("@")[2][:19]
                for name in row.get("RepoDigests") or []
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
    for name in row.get("RepoTags") or []:
        repository, _, tag = name.rpartition(":")
        if repository and "/" not in tag:
            tags.setdefault(repository, []).append(tag)
    for name in row.get("RepoDigests") or []:
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
    steps = Client(args.host).get_json(f"/images/{args.reference}/history")
    if args.quiet:
        for step in steps:
            print(_history_id(step["Id"], args.no_trunc))
        return 0
    table = [("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT")]
    for step in steps:
        created_by = step["CreatedBy"].replace("\t", " ")
        if not args.no_trunc:
            created_by = _ellipsis(created_by, 45)
        table.append(
            (
                _history_id(step["Id"], args.no_trunc),
                _ago(step["Created"]),
                created_by,
                human_size(step["Size"], 3),
                step["Comment"],
            )
        )
    _print_table(table)
    return 0


def _history_id(image_id: str, full: bool) -> str:
    return image_id if image_id == "<missing>" else _image_id(image_id, full)


def _ellipsis(text: str, width: int) -> str:
    """docker's Ellipsis: cut to `width` characters, the last one `…`."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _prune(args: argparse.Namespace) -> int:
    filters = _filters(args.filter, dangling="false" if args.all else "true")
    if not args.force and not _confirmed(args.all):
        return 1
    report = json.loads(
        Client(args.host).request("POST", "/images/prune", {"filters": json.dumps(filters)}).read()
    )
    deleted = report.get("ImagesDeleted") or []
    if deleted:
        print("Deleted Images:")
        for record in deleted:
            if record.get("Untagged"):
                print(f"untagged: {record['Untagged']}")
            else:
                print(f"deleted: {record['Deleted']}")
        print()
    print(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}")
    return 0


def _confirmed(every: bool) -> bool:
    """Ask on the terminal, as `docker image prune` does; without one, say --force."""
    what = "every image" if every else "every image without a tag (dangling)"
    if not sys.stdin.isatty():
        print(
            f"ferryd prune would remove {what}: give --force to do it without a terminal "
            "to confirm on",
            file=sys.stderr,
        )
        return False
    answer = input(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _df(args: argparse.Namespace) -> int:
    usage = Client(args.host).get_json("/system/df", {"type": "image"})
    images = usage.get("Images") or []
    size = usage.get("LayersSize") or 0
    reclaimable = f"{human_size(size)} (100%)" if size else human_size(0)
    _print_table(
        [
            ("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"),
            ("Images", str(len(images)), "0", human_size(size), reclaimable),
        ]
    )
    return 0
