"""`ferryd login` and `ferryd logout`: the docker CLI's, without the docker CLI.

`login` has the daemon check the login against the registry (`POST /auth`), then keeps
it in `$DOCKER_CONFIG/config.json` as `docker login` keeps it (a credential helper
when one is configured for the registry, else `auths`; an identity token from the
registry's token service in place of the password). `logout` forgets it, under every
key docker may have kept it under. `ferryd pull` and `push` send what is kept.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from ferryd.cli import dockerconfig
from ferryd.cli.client import Client, DaemonError, malformed

_UNENCRYPTED = (
    "WARNING! Your credentials are stored unencrypted in '{path}'.\n"
    "Configure a credential helper to remove this warning. See\n"
    "https://docs.docker.com/go/credential-store/\n"
)


class LoginError(Exception):
    """What the user asked cannot be done (said as `Error: …`, exit 1)."""


def add_commands(commands: Any) -> None:
    """`login` and `logout` on the CLI's subcommand parser."""
    login = commands.add_parser(
        "login",
        help="log in to a registry (kept in $DOCKER_CONFIG/config.json, as docker does)",
        description="Check a login against a registry through the daemon, then keep it "
        "where `docker login` keeps it. SERVER defaults to Docker Hub.",
    )
    login.add_argument("server", nargs="?", default="", metavar="SERVER")
    login.add_argument("-u", "--username", help="username")
    login.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.set_defaults(handler=_login)
    logout = commands.add_parser("logout", help="forget the login kept for a registry")
    logout.add_argument("server", nargs="?", default="", metavar="SERVER")
    logout.set_defaults(handler=_logout)


def _login(args: argparse.Namespace) -> int:
    try:
        return _run_login(args)
    except (LoginError, dockerconfig.ConfigFileError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _run_login(args: argparse.Namespace) -> int:
    username, password = args.username, args.password
    if args.password_stdin:
        if password is not None:
            raise LoginError(
                "conflicting options: cannot specify both --password and --password-stdin"
            )
        if not username:
            raise LoginError("the --password-stdin option requires --username to be set")
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if username is not None and not username:
        raise LoginError("username is empty")
    if args.password is not None:
        if not args.password:
            raise LoginError("password is empty")
        print(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
            file=sys.stderr,
        )
    key = dockerconfig.server_key(args.server)
    client = Client(args.host)
    if not username and not password:
        stored = dockerconfig.get_login(key)
        if stored.get("username") and stored.get("password"):
            print(
                f"Authenticating with existing credentials... [Username: {stored['username']}]",
                file=sys.stderr,
            )
            try:
                return _finish(client, key, stored["username"], stored["password"])
            except DaemonError as exc:
                print(f"Login did not succeed, error: {exc}", file=sys.stderr)
        username = stored.get("username", "")
    username, password = _ask(username, password, args.username is None)
    return _finish(client, key, username, password)


def _ask(username: str | None, password: str | None, ask_username: bool) -> tuple[str, str]:
    """What is missing, asked on the terminal (never from a pipe)."""
    if username and password:
        return username, password
    if not sys.stdin.isatty():
        raise LoginError("Cannot perform an interactive login from a non TTY device")
    if ask_username or not username:
        default = username or ""
        prompt = f"Username ({default}): " if default else "Username: "
        try:
            username = input(prompt).strip() or default
        except EOFError:
            raise _aborted("username") from None
        if not username:
            raise LoginError("Non-null Username Required")
    if not password:
        try:
            password = getpass.getpass("Password: ")
        except EOFError:
            raise _aborted("password") from None
        if not password:
            raise LoginError("Password Required")
    return username, password


def _aborted(asked: str) -> LoginError:
    """The input ended (Ctrl-D) at a prompt: the user gave up, not an empty answer."""
    print(file=sys.stderr)  # the prompt's line ends before the error, not in it
    return LoginError(f"login aborted: the input ended at the {asked} prompt")


def _finish(client: Client, key: str, username: str, password: str) -> int:
    body = json.dumps({"username": username, "password": password, "serveraddress": key})
    answer = client.json_object(
        "POST", "/auth", headers={"Content-Type": "application/json"}, body=body.encode()
    )
    for field in ("IdentityToken", "Status"):
        # The token is kept as the login's secret: anything but a string is no token.
        if not isinstance(answer.get(field) or "", str):
            raise malformed("POST /auth", f"{field!r} is not a string: {answer[field]!r:.60}")
    identity_token = answer.get("IdentityToken") or ""
    kept_password = "" if identity_token else password
    where = dockerconfig.store_login(key, username, kept_password, identity_token)
    if kept_password and not where.startswith("docker-credential-"):
        print(_UNENCRYPTED.format(path=where), file=sys.stderr)
    print(answer.get("Status") or "Login Succeeded")
    return 0


def _logout(args: argparse.Namespace) -> int:
    server = args.server or dockerconfig.INDEX_SERVER
    key = dockerconfig.server_key(server)
    print(f"Removing login credentials for {key}")
    try:
        errors = dockerconfig.erase_login(server)
    except dockerconfig.ConfigFileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if errors:
        print("WARNING: could not erase credentials:", file=sys.stderr)
        for error in errors:
            print(error, file=sys.stderr)
    return 0
