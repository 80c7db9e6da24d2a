"""Access control: the socket is not root-equivalent.

`[access]` gives users and groups permissions (read, pull, push, delete, all); every
route needs one; root and the daemon's own user may do everything; without an
`[access]` table everyone may do everything, as before. Unit tests of the settings,
the route table and the resolution of a client's permissions, then end-to-end tests
through the real daemon's socket with clients running as another user (root only:
the test forks and drops to `nobody`).
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import structlog
from starlette.applications import Starlette
from starlette.routing import Route

from ferryd.daemon.api.access import (
    ROUTES,
    AccessControl,
    AccessPolicy,
    Account,
    permission_for,
)
from ferryd.daemon.api.app import build_app
from ferryd.daemon.api.peers import Peer
from ferryd.daemon.settings import Access, Settings, load_settings
from ferryd.daemon.state import DaemonState
from ferryd.errors import ConfigError, PermissionDeniedError
from support.daemon import Daemon
from support.images import LayerSpec, build_image, seed
from support.registry import Registry
from support.waiting import wait_until

EVERYTHING = frozenset({"read", "pull", "push", "delete"})


# -- settings ---------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "ferryd.toml"
    path.write_text(text)
    return load_settings(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return str(caught.value).removeprefix(f"config file {tmp_path / 'ferryd.toml'}: ")


def test_without_an_access_table_everyone_may_do_everything(tmp_path: Path) -> None:
    access = _load(tmp_path, "").access

    assert access == Access(everyone=["all"], users={}, groups={})
    assert not access.enabled


def test_an_access_table_without_everyone_gives_the_unnamed_nothing(tmp_path: Path) -> None:
    access = _load(tmp_path, "[access]\n").access

    assert access.everyone == []
    assert access.enabled


def test_users_and_groups_by_name_or_number(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    access = _load(
        tmp_path,
        f"""
        [access]
        everyone = ["read"]
        users = {{ {me} = ["pull", "push"], "4242" = ["delete"] }}
        [access.groups]
        root = ["read", "pull"]
        4343 = ["all"]
        """,
    ).access

    assert access.everyone == ["read"]
    assert access.users == {me: ["pull", "push"], "4242": ["delete"]}
    assert access.groups == {"root": ["read", "pull"], "4343": ["all"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[access]\nusers = { no-such-user-here = ["read"] }',
            'access.users."no-such-user-here": there is no user named "no-such-user-here" '
            "on this system (give a user name that exists, or a user number)",
        ),
        (
            '[access]\ngroups = { no-such-group-here = ["read"] }',
            'access.groups."no-such-group-here": there is no group named '
            '"no-such-group-here" on this system (give a group name that exists, or a '
            "group number)",
        ),
        (
            '[access]\nusers = { root = ["pul"] }',
            'access.users."root": unknown permission "pul" (did you mean "pull"?); '
            'expected "read", "pull", "push", "delete", "all"',
        ),
        (
            '[access]\ngroups = { root = ["write"] }',
            'access.groups."root": unknown permission "write"; '
            'expected "read", "pull", "push", "delete", "all"',
        ),
        (
            '[access]\neveryone = ["Read"]',
            'access.everyone: unknown permission "Read" (did you mean "read"?); '
            'expected "read", "pull", "push", "delete", "all"',
        ),
        (
            '[access]\nusers = { root = "read" }',
            'access.users."root": expected an array of permissions such as '
            '["read", "pull"], got "read"',
        ),
        (
            "[access]\ngroups = { root = [1] }",
            'access.groups."root": expected an array of permissions such as '
            '["read", "pull"], got [1]',
        ),
        ("[access]\nuser = {}", "access: unknown key `user` (did you mean `users`?)"),
        ("access = 1", "access: Expected `table`, got `int`"),
        ('[access]\nusers = ["root"]', "access.users: Expected `table`, got `array`"),
        ('[access]\neveryone = "read"', "access.everyone: Expected `array`, got `str`"),
        (
            '[access]\nusers = { "4294967295" = ["read"] }',
            'access.users."4294967295": 4294967295 is not a user number',
        ),
        (
            '[access]\neveryone = ["all"]\nusers = { root = ["read"] }',
            'access.everyone: ["all"] lets every client do everything, so the users and '
            'groups entries would change nothing; give everyone less (e.g. [] or ["read"]) '
            "or leave the entries out",
        ),
    ],
)
def test_a_wrong_access_table_is_a_config_error_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    assert _error(tmp_path, text) == message


def test_command_line_flags_keep_the_access_table(tmp_path: Path) -> None:
    path = tmp_path / "ferryd.toml"
    path.write_text('[access]\nusers = { root = ["read"] }')

    settings = load_settings(path, {"log_level": "debug"})

    assert settings.access == Access(everyone=[], users={"root": ["read"]}, groups={})


# -- the route table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", "/_ping", "read"),
        ("HEAD", "/_ping", "read"),
        ("GET", "/version", "read"),
        ("GET", "/info", "read"),
        ("GET", "/events", "read"),
        ("GET", "/transfers", "read"),
        ("GET", "/images/json", "read"),
        ("GET", "/images/host:5000/team/app:1.2/json", "read"),
        ("GET", "/images/sha256:abc/json", "read"),
        ("GET", "/images/alpine/history", "read"),
        ("POST", "/images/create", "pull"),
        ("POST", "/images/alpine/tag", "pull"),
        ("POST", "/images/host:5000/team/app/push", "push"),
        ("DELETE", "/images/host:5000/team/app:1.2", "delete"),
        ("DELETE", "/images/sha256:abc", "delete"),
        ("POST", "/images/prune", "delete"),
        ("POST", "/images/load", "delete"),
        ("POST", "/fsck", "delete"),
        ("POST", "/v1.47/fsck", "all"),
        # Routes the table does not know need everything.
        ("GET", "/nothing/here", "all"),
        # What ferryd answers 501 to needs no more than to look.
        ("GET", "/containers/json", "read"),
        ("POST", "/build", "read"),
        ("POST", "/images/json", "all"),
        ("GET", "/images/alpine", "all"),
        ("PUT", "/images/alpine", "all"),
        ("DELETE", "/images/", "all"),
        ("POST", "/_ping", "all"),
        ("GET", "/v1.47/images/json", "all"),  # the prefix is taken off before
        ("GET", "/", "all"),
    ],
)
def test_each_route_needs_its_permission(method: str, path: str, permission: str) -> None:
    assert permission_for(method, path) == permission


def _starlette(app: Any) -> Starlette:
    while not isinstance(app, Starlette):
        app = app._app
    return app


def test_every_route_the_api_serves_is_in_the_access_table() -> None:
    access = AccessControl(AccessPolicy(Access()))
    app = _starlette(build_app(None, DaemonState(Settings()), access))  # type: ignore[arg-type]
    listed = {(method, path.replace("{name}", "{name:path}")) for method, path, _ in ROUTES}

    served = [
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
    ]

    assert len(served) > len(ROUTES) // 2
    for method, path in served:
        assert ("GET" if method == "HEAD" else method, path) in listed, (method, path)
        sample = path.replace("{name:path}", "127.0.0.1:5000/team/app:1")
        assert permission_for(method, sample) != "all", (method, path)


# -- a client's permissions -------------------------------------------------------------


class FakeAccounts:
    """The system's users, made up: uid → (name, primary and supplementary gids)."""

    def __init__(self, users: dict[int, tuple[str, set[int]]]) -> None:
        self.users = users
        self.asked: list[int] = []

    def __call__(self, uid: int) -> Account:
        self.asked.append(uid)
        if uid not in self.users:
            return Account(None, frozenset())
        name, gids = self.users[uid]
        return Account(name, frozenset(gids))


ALICE, BOB, CAROL, STRANGER = 1001, 1002, 1003, 1999
DAEMON_UID = 998
STAFF, CI, OPS = 2001, 2002, 2003


def _policy(accounts: FakeAccounts | None = None, **access: Any) -> AccessPolicy:
    fake = accounts or FakeAccounts(
        {
            ALICE: ("alice", {STAFF}),
            BOB: ("bob", {STAFF, CI}),  # CI is a supplementary group
            CAROL: ("carol", {OPS}),
        }
    )
    return AccessPolicy(Access(**access), daemon_uid=DAEMON_UID, accounts=fake)


def _has(policy: AccessPolicy, uid: int, gid: int = 0) -> frozenset[str]:
    account = policy.cached_account(uid) or policy.load_account(uid)
    return policy.permissions(Peer(pid=1, uid=uid, gid=gid), account)


def test_a_user_has_its_own_entry_and_those_of_all_its_groups() -> None:
    policy = _policy(
        everyone=[],
        users={str(ALICE): ["read"], str(BOB): ["delete"]},
        groups={str(STAFF): ["pull"], str(CI): ["push"]},
    )

    assert _has(policy, ALICE, gid=STAFF) == {"read", "pull"}
    assert _has(policy, BOB, gid=STAFF) == {"read", "pull", "push", "delete"}
    assert _has(policy, CAROL, gid=OPS) == set()
    assert _has(policy, STRANGER, gid=STRANGER) == set()


def test_the_gid_the_socket_reports_counts_too() -> None:
    """A client running with a group its passwd entry does not list (sg, setgid)."""
    policy = _policy(everyone=[], groups={str(OPS): ["pull"]})

    assert _has(policy, ALICE, gid=STAFF) == set()
    assert _has(policy, ALICE, gid=OPS) == {"read", "pull"}
    assert _has(policy, STRANGER, gid=OPS) == {"read", "pull"}


def test_everyone_is_added_to_every_client() -> None:
    policy = _policy(everyone=["read"], users={str(ALICE): ["push"]})

    assert _has(policy, ALICE) == {"read", "push"}
    assert _has(policy, STRANGER) == {"read"}


@pytest.mark.parametrize(
    ("given", "has"),
    [
        (["read"], {"read"}),
        (["pull"], {"read", "pull"}),
        (["push"], {"read", "push"}),
        (["delete"], {"read", "delete"}),
        (["pull", "push"], {"read", "pull", "push"}),
        (["all"], EVERYTHING),
        (["read", "all"], EVERYTHING),
        ([], set()),
    ],
)
def test_all_is_everything_and_changing_anything_includes_read(
    given: list[str], has: set[str]
) -> None:
    assert _has(_policy(everyone=[], users={str(ALICE): given}), ALICE) == has


def test_root_and_the_daemons_own_user_may_always_do_everything() -> None:
    policy = _policy(everyone=[])

    assert policy.enabled
    assert _has(policy, 0) == EVERYTHING
    assert _has(policy, DAEMON_UID) == EVERYTHING
    assert policy.trusted(0)
    assert policy.trusted(DAEMON_UID)
    assert not policy.trusted(ALICE)


def test_without_access_control_everyone_may_do_everything() -> None:
    policy = _policy()

    assert not policy.enabled
    assert _has(policy, STRANGER) == EVERYTHING
    assert policy.permissions(None, None) == EVERYTHING


def test_a_client_without_socket_credentials_may_do_nothing() -> None:
    policy = _policy(everyone=["read"])

    assert policy.permissions(None, None) == set()


def test_named_users_are_looked_up_when_the_policy_is_built_others_once() -> None:
    accounts = FakeAccounts({ALICE: ("alice", {STAFF}), CAROL: ("carol", {OPS})})
    policy = _policy(accounts, everyone=[], users={str(ALICE): ["read"]})

    assert accounts.asked == [ALICE]
    assert policy.cached_account(ALICE) == Account("alice", frozenset({STAFF}))
    assert policy.cached_account(CAROL) is None
    policy.load_account(CAROL)
    assert policy.cached_account(CAROL) == Account("carol", frozenset({OPS}))
    assert accounts.asked == [ALICE, CAROL]


def test_user_and_group_names_are_looked_up_on_this_system() -> None:
    """root is uid 0 and gid 0 everywhere."""
    policy = AccessPolicy(
        Access(everyone=[], users={"root": ["read"]}, groups={"root": ["pull"]}),
        daemon_uid=DAEMON_UID,
        accounts=FakeAccounts({ALICE: ("alice", {0})}),
    )

    assert _has(policy, ALICE) == {"read", "pull"}  # by its group root


# -- the check: 403, the message, one log line ------------------------------------------


async def _check(control: AccessControl, method: str, path: str, peer: Peer | None) -> None:
    scope = {"type": "http", "method": method, "path": path, "state": {"peer": peer}}
    await control.check(scope, path)


async def test_a_refused_request_names_the_user_and_the_permission_it_lacks() -> None:
    control = AccessControl(_policy(everyone=[], users={str(ALICE): ["read"]}))

    with structlog.testing.capture_logs() as logged, pytest.raises(PermissionDeniedError) as caught:
        await _check(control, "POST", "/images/create", Peer(pid=77, uid=ALICE, gid=STAFF))

    assert caught.value.status == 403
    assert str(caught.value) == (
        'permission denied: alice (uid 1001) may not pull (POST /images/create needs "pull"; '
        'alice has "read")'
    )
    assert logged == [
        {
            "event": "api.denied",
            "log_level": "warning",
            "uid": ALICE,
            "gid": STAFF,
            "pid": 77,
            "user": "alice",
            "method": "POST",
            "path": "/images/create",
            "permission": "pull",
        }
    ]


@pytest.mark.parametrize(
    ("method", "path", "peer", "message"),
    [
        (
            "DELETE",
            "/images/alpine",
            Peer(pid=1, uid=STRANGER, gid=STRANGER),
            "permission denied: an unnamed user (uid 1999) may not delete "
            '(DELETE /images/alpine needs "delete"; it has no permission)',
        ),
        (
            "GET",
            "/nothing/here",
            Peer(pid=1, uid=BOB, gid=STAFF),
            "permission denied: bob (uid 1002) may not use GET /nothing/here (a route "
            'the access table does not list needs "all"; bob has "read", "pull", "push")',
        ),
        (
            "GET",
            "/_ping",
            None,
            "permission denied: a client without socket credentials (not on the Unix "
            'socket) may not read (GET /_ping needs "read"; it has no permission)',
        ),
    ],
)
async def test_refusals_say_who_and_what(
    method: str, path: str, peer: Peer | None, message: str
) -> None:
    control = AccessControl(_policy(everyone=[], groups={str(STAFF): ["pull"], str(CI): ["push"]}))

    with structlog.testing.capture_logs(), pytest.raises(PermissionDeniedError) as caught:
        await _check(control, method, path, peer)

    assert str(caught.value) == message


async def test_an_allowed_request_is_not_logged() -> None:
    control = AccessControl(_policy(everyone=[], users={str(ALICE): ["pull"]}))

    with structlog.testing.capture_logs() as logged:
        await _check(control, "POST", "/images/create", Peer(1, ALICE, STAFF))
        await _check(control, "GET", "/images/json", Peer(1, ALICE, STAFF))
        await _check(control, "DELETE", "/images/x", Peer(1, 0, 0))

    assert logged == []


def test_access_off_is_said_once_at_start_and_when_a_reload_turns_it_off() -> None:
    with structlog.testing.capture_logs() as logged:
        control = AccessControl(_policy())
        control.apply(_policy())
        control.apply(_policy(everyone=["read"]))
        control.apply(_policy(everyone=["read"]))
        control.apply(_policy())

    assert [entry["event"] for entry in logged] == ["api.access_off", "api.access_off"]
    assert logged[0]["log_level"] == "warning"


# -- through the real daemon, as another user -------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="clients as another user need root (setuid after fork)"
)


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user `nobody` on this system")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def open_daemon() -> Iterator[Callable[..., Daemon]]:
    """The daemon on a socket every user can reach (mode 0666 in a 0755 directory: the
    usual per-test directories are root's alone), so access control is all that stops
    a client."""
    started: list[Daemon] = []
    workdirs: list[Path] = []

    def start(**settings: Any) -> Daemon:
        workdir = Path(tempfile.mkdtemp(prefix="ferryd-access-"))
        workdir.chmod(0o755)
        workdirs.append(workdir)
        daemon = Daemon(workdir, {"socket_mode": "0666", **settings})
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    for workdir in workdirs:
        shutil.rmtree(workdir, ignore_errors=True)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=60)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _request(
    daemon: Daemon, method: str, path: str, params: dict[str, str] | None = None
) -> dict[str, Any]:
    connection = _Unix(daemon.socket)
    try:
        connection.request(method, path + (f"?{urlencode(params)}" if params else ""))
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    return {"status": response.status, "body": body, "pid": os.getpid()}


def _as(
    uid: int, gid: int, daemon: Daemon, method: str, path: str, params: dict[str, str] | None = None
) -> dict[str, Any]:
    """`_request` from a child process that runs as `uid`:`gid` with no other groups."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: nothing but the request, then out
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = _request(daemon, method, path, params)
            with os.fdopen(write_end, "wb") as out:
                out.write(json.dumps(result).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the client as another user failed"
    result: dict[str, Any] = json.loads(data)
    return result


def _message(result: dict[str, Any]) -> str:
    message: str = json.loads(result["body"])["message"]
    return message


def _denials(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.log_events("api.denied")


def _image(registry: Registry, layout: Path, name: str, seed_number: int) -> str:
    build_image(layout, layers=[LayerSpec(size=2000, seed=seed_number)])
    seed(registry, layout, "latest", name)
    return f"{registry.host}/{name}"


@needs_root
def test_a_reader_can_list_but_not_pull(open_daemon: Callable[..., Daemon]) -> None:
    uid, gid = _nobody()
    daemon = open_daemon(access={"users": {"nobody": ["read"]}})

    listed = _as(uid, gid, daemon, "GET", "/images/json")
    assert (listed["status"], json.loads(listed["body"])) == (200, [])
    assert _as(uid, gid, daemon, "GET", "/_ping")["status"] == 200
    assert _as(uid, gid, daemon, "GET", "/v1.47/info")["status"] == 200

    refused = _as(uid, gid, daemon, "POST", "/v1.47/images/create", {"fromImage": "alpine"})

    assert refused["status"] == 403
    assert _message(refused) == (
        f'permission denied: nobody (uid {uid}) may not pull (POST /images/create needs "pull"; '
        'nobody has "read")'
    )
    [denied] = _denials(daemon)
    assert denied["level"] == "warning"
    assert {k: denied[k] for k in ("uid", "gid", "pid", "method", "path", "permission")} == {
        "uid": uid,
        "gid": gid,
        "pid": refused["pid"],
        "method": "POST",
        "path": "/images/create",
        "permission": "pull",
    }
    # The request log has the path as the client sent it; it is written once the
    # answer has gone.
    path = "/v1.47/images/create"
    wait_until(lambda: [e for e in daemon.log_events("api.request") if e["path"] == path])
    [logged] = [e for e in daemon.log_events("api.request") if e["path"] == path]
    assert (logged["status"], logged["uid"]) == (403, uid)
    assert daemon.images() == []


@needs_root
def test_a_puller_can_pull_and_tag_but_not_push_or_remove(
    open_daemon: Callable[..., Daemon], registry: Registry, layout: Path
) -> None:
    uid, gid = _nobody()
    group = grp.getgrgid(gid).gr_name
    reference = _image(registry, layout, "access/pulled:v1", 7101)
    # By the group of nobody's passwd entry: the client runs with another gid.
    daemon = open_daemon(access={"groups": {group: ["pull"]}})
    other_gid = 1 if gid != 1 else 2

    pulled = _as(uid, other_gid, daemon, "POST", "/images/create", {"fromImage": reference})
    assert pulled["status"] == 200
    assert "error" not in pulled["body"]
    assert [image["RepoTags"] for image in daemon.images()] == [[reference]]
    copy = f"{registry.host}/access/copy"
    tagged = _as(uid, other_gid, daemon, "POST", f"/images/{reference}/tag", {"repo": copy})
    assert tagged["status"] == 201

    removed = _as(uid, other_gid, daemon, "DELETE", f"/images/{reference}")
    pushed = _as(uid, other_gid, daemon, "POST", f"/images/{copy}/push", {"tag": "latest"})

    assert removed["status"] == pushed["status"] == 403
    assert "may not delete" in _message(removed)
    assert "may not push" in _message(pushed)
    assert [d["permission"] for d in _denials(daemon)] == ["delete", "push"]
    assert len(daemon.images()[0]["RepoTags"]) == 2


@needs_root
def test_root_may_always_do_everything(open_daemon: Callable[..., Daemon]) -> None:
    uid, gid = _nobody()
    daemon = open_daemon(access={})  # an empty table: only root and the daemon's user

    assert _as(uid, gid, daemon, "GET", "/_ping")["status"] == 403
    # Refused before its version is looked at: the docker CLI, its /_ping refused,
    # asks with its own (newer) version, and must hear why it may not.
    too_new = _as(uid, gid, daemon, "GET", "/v1.99/images/json")
    assert too_new["status"] == 403
    assert _message(too_new).startswith(
        f"permission denied: nobody (uid {uid}) may not read (GET /images/json needs"
    )
    assert daemon.client().get_json("/images/json") == []
    root = _as(0, 0, daemon, "DELETE", "/images/nothing:here")
    assert root["status"] == 404  # allowed, and there is no such image
    assert [d["uid"] for d in _denials(daemon)] == [uid, uid]


@needs_root
def test_without_an_access_table_every_user_may_do_everything(
    open_daemon: Callable[..., Daemon],
) -> None:
    uid, gid = _nobody()
    daemon = open_daemon()

    assert _as(uid, gid, daemon, "GET", "/images/json")["status"] == 200
    assert _as(uid, gid, daemon, "DELETE", "/images/nothing:here")["status"] == 404
    assert _as(uid, gid, daemon, "POST", "/images/nothing:here/tag", {"repo": "x"})["status"] == (
        404
    )
    assert _denials(daemon) == []
    [off] = daemon.log_events("api.access_off")
    assert off["level"] == "warning"


@needs_root
def test_the_peers_gid_from_the_socket_counts(open_daemon: Callable[..., Daemon]) -> None:
    uid, gid = _nobody()
    other_gid = 1 if gid != 1 else 2
    daemon = open_daemon(access={"groups": {str(other_gid): ["read"]}})

    assert _as(uid, other_gid, daemon, "GET", "/images/json")["status"] == 200
    assert _as(uid, gid, daemon, "GET", "/images/json")["status"] == 403


@needs_root
def test_a_reload_changes_access_live(open_daemon: Callable[..., Daemon]) -> None:
    uid, gid = _nobody()
    daemon = open_daemon(access={"users": {"nobody": ["read"]}})
    assert _as(uid, gid, daemon, "DELETE", "/images/nothing:here")["status"] == 403

    event = daemon.reload(access={"users": {"nobody": ["delete"]}})

    assert event["event"] == "daemon.reloaded"
    assert event["changed"] == ["access"]
    assert event["needs_restart"] == []
    assert _as(uid, gid, daemon, "DELETE", "/images/nothing:here")["status"] == 404

    failed = daemon.reload(access={"users": {"no-such-user-here": ["all"]}})

    assert failed["event"] == "daemon.reload_failed"
    assert 'access.users."no-such-user-here": there is no user named' in failed["error"]
    assert _as(uid, gid, daemon, "DELETE", "/images/nothing:here")["status"] == 404
    assert _as(uid, gid, daemon, "POST", "/images/create", {"fromImage": "x"})["status"] == 403

    del daemon.settings["access"]
    assert daemon.reload()["changed"] == ["access"]

    assert _as(uid, gid, daemon, "POST", "/images/x/tag", {"repo": "y"})["status"] == 404
    assert len(daemon.log_events("api.access_off")) == 1


def test_a_bad_access_table_stops_the_daemon_naming_the_key(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, {"access": {"users": {"root": ["rmi"]}}})

    with pytest.raises(RuntimeError) as caught:
        daemon.start()

    assert "ferryd exited 2" in str(caught.value)
    [failed] = daemon.log_events("daemon.start_failed")
    assert (
        'access.users."root": unknown permission "rmi" (did you mean "delete"?)'
        in (failed["error"])
    )
    assert not daemon.socket.exists()
