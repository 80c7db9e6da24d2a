"""Access control: what each client may do through the socket, by its user and groups.

Every route needs one permission (`ROUTES`, by method and path without the `/v1.NN`
prefix); a route the table does not list needs `all`, so a route
added without an entry is closed rather than open. A client has what `[access]` gives
`everyone`, its user (by the uid `SO_PEERCRED` reports) and each of its groups: the
user's primary and supplementary groups from pwd/grp, looked up once per start or
reload, and the gid the socket reports. root and the daemon's own user may always do
everything. Without an `[access]` table every client may do everything, as before.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ferryd.daemon.api.peers import Peer
from ferryd.daemon.api.routing import unsupported
from ferryd.daemon.settings import EVERY_PERMISSION, Access, access_ids, granted
from ferryd.errors import PermissionDeniedError

log = structlog.get_logger("ferryd.api")

# (methods, path, permission), first match wins; `{name}` is any image name, slashes
# included, as the routes' `{name:path}`. HEAD is matched as GET.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/_ping", "read"),
    ("GET", "/version", "read"),
    ("GET", "/info", "read"),
    ("GET", "/events", "read"),
    ("GET", "/transfers", "read"),
    ("GET", "/jobs", "read"),
    ("GET", "/metrics", "read"),
    ("GET", "/system/df", "read"),
    ("GET", "/images/json", "read"),
    ("GET", "/images/{name}/json", "read"),
    ("GET", "/images/{name}/history", "read"),
    # A login check and a registry's descriptor of an image reach the registry the
    # client names, with the client's login, as a pull does; `read` never has the
    # daemon reach out to another host.
    ("POST", "/auth", "pull"),
    ("GET", "/distribution/{name}/json", "pull"),
    # A pull, or an import (`fromSrc=-`): both add an image of the client's choosing
    # to the store, and the table goes by path, not by query.
    ("POST", "/images/create", "pull"),
    # Tagging adds a name to the local store, as a pull does (and a pull can already
    # move a tag to another image); it reaches no registry.
    ("POST", "/images/{name}/tag", "pull"),
    ("POST", "/images/{name}/push", "push"),
    # A save hands the client every byte of the images, as a push hands them to a
    # registry: content that may have come from a private registry with the daemon's
    # own login. `read` (monitoring) only looks at what is there.
    ("GET", "/images/get", "push"),
    ("GET", "/images/{name}/get", "push"),
    ("POST", "/images/prune", "delete"),
    # Empty answers that remove nothing, as the 501s beside them (`docker system prune`
    # asks them before and after the image prune, which needs `delete`).
    ("POST", "/containers/prune", "read"),
    ("POST", "/networks/prune", "read"),
    ("POST", "/volumes/prune", "read"),
    ("POST", "/build/prune", "read"),
    ("POST", "/images/load", "delete"),
    ("DELETE", "/images/{name}", "delete"),
    # ferryd's own: a check reads every blob of the store, a repair removes what is
    # broken; both are the store keeper's.
    ("POST", "/fsck", "delete"),
)
UNKNOWN_ROUTE = "all"  # what a route not in ROUTES needs

_ORDER = ("read", "pull", "push", "delete")


@dataclass(frozen=True, slots=True)
class _Rule:
    method: str
    pattern: re.Pattern[str]
    permission: str


def _compile(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(path).replace(re.escape("{name}"), ".+"))


_RULES = tuple(_Rule(method, _compile(path), permission) for method, path, permission in ROUTES)


def permission_for(method: str, path: str) -> str:
    """The permission `method path` needs (`path` without the `/v1.NN` prefix)."""
    method = "GET" if method == "HEAD" else method
    for rule in _RULES:
        if rule.method == method and rule.pattern.fullmatch(path):
            return rule.permission
    if unsupported(method, path) is not None:
        return "read"  # answered with a 501 that says what ferryd does not do; no more
    return UNKNOWN_ROUTE


@dataclass(frozen=True, slots=True)
class Account:
    """A user as this system knows it: its name (None without a passwd entry) and the
    groups it is in, primary and supplementary."""

    name: str | None
    gids: frozenset[int]


def system_account(uid: int) -> Account:
    """The user `uid` from pwd, and its groups (os.getgrouplist: /etc/group or NSS)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Account(None, frozenset())
    try:
        gids = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        gids = [entry.pw_gid]
    return Account(entry.pw_name, frozenset(gids))


_MAX_CACHED = 4096  # accounts kept between reloads; the cache starts over past this


class AccessPolicy:
    """`[access]` resolved: permissions by uid and gid, and the accounts looked up.

    Built at start and at each reload (names are looked up then: a ConfigError names a
    user or group that no longer exists); a client's groups are looked up the first
    time it connects (the named users' at once) and kept until the next reload.
    """

    def __init__(
        self,
        access: Access,
        *,
        daemon_uid: int | None = None,
        accounts: Callable[[int], Account] = system_account,
    ) -> None:
        everyone, users, groups = access_ids(access, "access")
        self.enabled = access.enabled
        self._everyone = granted(everyone)
        self._users = {uid: granted(names) for uid, names in users.items()}
        self._groups = {gid: granted(names) for gid, names in groups.items()}
        self._trusted = frozenset({0, os.geteuid() if daemon_uid is None else daemon_uid})
        self._accounts = accounts
        self._cache: dict[int, Account] = {}
        if self.enabled:
            for uid in self._users:
                self.load_account(uid)

    def trusted(self, uid: int) -> bool:
        """root and the daemon's own user: always allowed everything."""
        return uid in self._trusted

    def cached_account(self, uid: int) -> Account | None:
        return self._cache.get(uid)

    def load_account(self, uid: int) -> Account:
        """Look `uid` up (blocking: NSS may ask the network) and keep it."""
        account = self._accounts(uid)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[uid] = account
        return account

    def permissions(self, peer: Peer | None, account: Account | None) -> frozenset[str]:
        """What a client may do: everyone's, its user's and each of its groups'."""
        if not self.enabled:
            return EVERY_PERMISSION
        if peer is None:  # not a Unix socket: nobody knows who it is
            return frozenset()
        if self.trusted(peer.uid):
            return EVERY_PERMISSION
        has = set(self._everyone) | self._users.get(peer.uid, frozenset())
        gids = {peer.gid} | (account.gids if account is not None else frozenset())
        for gid in gids:
            has |= self._groups.get(gid, frozenset())
        return frozenset(has)


def allows(has: frozenset[str], needed: str) -> bool:
    return has >= EVERY_PERMISSION if needed == "all" else needed in has


def denial(
    peer: Peer | None,
    account: Account | None,
    method: str,
    path: str,
    needed: str,
    has: frozenset[str],
) -> str:
    """`permission denied: alice (uid 1000) may not pull (POST /images/create needs
    "pull"; alice has "read")`."""
    subject = "it"
    if peer is None:
        who = "a client without socket credentials (not on the Unix socket)"
    elif account is not None and account.name is not None:
        subject = account.name
        who = f"{account.name} (uid {peer.uid})"
    else:
        who = f"an unnamed user (uid {peer.uid})"
    held = ", ".join(f'"{p}"' for p in _ORDER if p in has)
    holds = f"{subject} has {held}" if held else f"{subject} has no permission"
    if needed == UNKNOWN_ROUTE:
        return (
            f"permission denied: {who} may not use {method} {path} (a route the access "
            f'table does not list needs "all"; {holds})'
        )
    return f'permission denied: {who} may not {needed} ({method} {path} needs "{needed}"; {holds})'


class AccessControl:
    """The policy in force: built at start, replaced by a reload."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        if not policy.enabled:
            _log_off()

    def apply(self, policy: AccessPolicy) -> None:
        was_enabled = self.policy.enabled
        self.policy = policy
        if was_enabled and not policy.enabled:
            _log_off()

    async def check(self, scope: Scope, path: str) -> None:
        """Raise PermissionDeniedError (and log `api.denied`) unless the request's
        client has the permission its route (`path`: without the version prefix)
        needs."""
        policy = self.policy
        if not policy.enabled:
            return
        peer: Peer | None = scope.get("state", {}).get("peer")
        if peer is not None and policy.trusted(peer.uid):
            return
        method = scope.get("method", "GET")
        needed = permission_for(method, path)
        account = None
        if peer is not None:
            account = policy.cached_account(peer.uid)
            if account is None:
                account = await anyio.to_thread.run_sync(policy.load_account, peer.uid)
        has = policy.permissions(peer, account)
        if allows(has, needed):
            return
        log.warning(
            "api.denied",
            uid=peer.uid if peer else None,
            gid=peer.gid if peer else None,
            pid=peer.pid if peer else None,
            user=account.name if account else None,
            method=method,
            path=path,
            permission=needed,
        )
        raise PermissionDeniedError(denial(peer, account, method, path, needed, has))


def _log_off() -> None:
    log.warning(
        "api.access_off",
        reason="every client that can open the socket may do everything; "
        "an [access] table in the config restricts what each user and group may do",
    )


Answer = Callable[[Request, Exception], Awaitable[Response]]


class AccessMiddleware:
    """ASGI middleware in front of every route: a refused request is answered by
    `answer` (the app's one FerrydError → status handler) and goes no further.

    `route_path` takes the `/v1.NN` prefix off a path. The check comes before the
    version check, so that a client that may do nothing hears so, not that its API
    version is too new (the docker CLI negotiates its version with /_ping, which
    such a client may not ask).
    """

    def __init__(
        self,
        app: ASGIApp,
        control: AccessControl,
        answer: Answer,
        route_path: Callable[[str], str] = lambda path: path,
    ) -> None:
        self._app = app
        self._control = control
        self._answer = answer
        self._route_path = route_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                await self._control.check(scope, self._route_path(scope["path"]))
            except PermissionDeniedError as exc:
                if scope["type"] == "http":
                    response = await self._answer(Request(scope, receive), exc)
                    await response(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self._app(scope, receive, send)
