"""The daemon's own logins, from a docker `config.json`: `auths`, `credHelpers`, `credsStore`.

Looked up as the docker CLI does, for each pull and push (helpers may rotate secrets):
the registry's entry in `credHelpers`, else the `credsStore` helper, else `auths`.
A helper is `docker-credential-NAME` on PATH, asked with `get` and the server URL on
stdin; it answers `{"ServerURL", "Username", "Secret"}` (Username `<token>` means the
secret is an identity token). As in docker, a registry that has a helper is the
helper's alone: when the helper knows no login for it, the pull is anonymous, whatever
`auths` says (docker keeps only emails there once a helper is set).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ferryd.errors import ConfigError, CredentialHelperError, InvalidRegistryAuthError
from ferryd.oci.reference import DEFAULT_DOMAIN
from ferryd.registry.auth import (
    ANONYMOUS,
    Credentials,
    credentials_from_entry,
    registry_domain,
    sendable,
)
from ferryd.untrusted import loads

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # what docker stores docker.io under
_NOT_FOUND = "credentials not found in native keychain"


@dataclass(frozen=True)
class CredentialStore:
    """The daemon's logins as one credentials file gives them; rebuilt on reload.

    Holds the parsed file, never a helper's answer: helpers are asked at each lookup.
    """

    auths: Mapping[str, Credentials] = field(default_factory=dict)
    helpers: Mapping[str, str] = field(default_factory=dict)  # registry domain → helper
    default_helper: str = ""  # credsStore
    timeout: float = 10.0

    @classmethod
    def from_file(cls, path: Path | None) -> CredentialStore:
        """Read `path` (None: no logins); a missing or malformed file is a ConfigError
        naming it, so that a mistyped path does not turn every pull anonymous."""
        if path is None:
            return cls()
        data = _read(path)
        auths = _object(data, "auths", path)
        helpers = _object(data, "credHelpers", path)
        store = data.get("credsStore", "")
        if not isinstance(store, str):
            raise ConfigError(f"credentials file {path}: 'credsStore' must be a string")
        result: dict[str, Credentials] = {}
        for server, entry in auths.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"credentials file {path}: auths[{server!r}] must be an object")
            where = f"credentials file {path}: auths[{server!r}]"
            try:
                result[registry_domain(server)] = credentials_from_entry(entry, where)
            except InvalidRegistryAuthError as exc:
                raise ConfigError(str(exc)) from None
        names: dict[str, str] = {}
        for server, name in helpers.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    f"credentials file {path}: credHelpers[{server!r}] must name a helper"
                )
            names[registry_domain(server)] = name
        return cls(result, names, store)

    async def lookup(self, domain: str) -> Credentials:
        """The login for `domain`, or anonymous; a helper that fails raises
        CredentialHelperError (its reason, never a secret)."""
        helper = self.helpers.get(domain) or self.default_helper
        if helper:
            return await self._ask(helper, domain) or ANONYMOUS
        return self.auths.get(domain, ANONYMOUS)

    async def _ask(self, helper: str, domain: str) -> Credentials | None:
        # PATH is searched in a worker thread: a slow (network) PATH entry must not
        # stall the event loop.
        program = await anyio.to_thread.run_sync(shutil.which, f"docker-credential-{helper}")
        if program is None:
            raise CredentialHelperError(
                f"credential helper docker-credential-{helper} (for {domain}) is not on PATH"
            )
        server = DOCKER_HUB_SERVER if domain == DEFAULT_DOMAIN else domain
        try:
            with anyio.fail_after(self.timeout):
                done = await anyio.run_process([program, "get"], input=server.encode(), check=False)
        except TimeoutError:
            raise CredentialHelperError(
                f"credential helper docker-credential-{helper} gave no answer for {domain} "
                f"within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise CredentialHelperError(
                f"cannot run credential helper docker-credential-{helper}: {exc}"
            ) from None
        return _answer(done, helper, domain)


def _answer(
    done: subprocess.CompletedProcess[bytes], helper: str, domain: str
) -> Credentials | None:
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        if _NOT_FOUND in out:
            return None
        # A failing helper prints its reason; an answer with a secret in it (a confused
        # helper) is not echoed.
        reason = out or done.stderr.decode(errors="replace").strip()
        if '"Secret"' in reason:
            reason = "its output is withheld: it holds a secret"
        reason = reason[:200]
        raise CredentialHelperError(
            f"credential helper docker-credential-{helper} failed for {domain} "
            f"(exit status {done.returncode}): {reason or 'no message'}"
        )
    try:
        data = loads(out)
        username, secret = data["Username"], data["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CredentialHelperError(
            f"credential helper docker-credential-{helper} answered {domain} with something "
            'other than {"Username": …, "Secret": …}'
        ) from None
    if username == "<token>":
        credentials = Credentials(identity_token=secret)
    else:
        credentials = Credentials(username=username, password=secret)
    try:
        return sendable(credentials, f"credential helper docker-credential-{helper}'s login")
    except InvalidRegistryAuthError as exc:
        raise CredentialHelperError(f"{exc} for {domain}") from None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"credentials file {path} does not exist: create it (a docker config.json) "
            'or set credentials_file = ""'
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"credentials file {path}: expected a JSON object")
    return data


def _object(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"credentials file {path}: {key!r} must be an object")
    return value
