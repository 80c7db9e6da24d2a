"""Which URL and TLS settings reach a registry: the registry service, as moby's.

`docker.io` is served by `registry-1.docker.io`. A registry is insecure when its
`host[:port]` or its address is in the insecure list (loopback by default, as in
dockerd): it is tried over HTTPS without verification first, then over plain HTTP.
Certificates come from `certs.d/HOST[:PORT]/` as docker lays them out.

Any registry may have mirrors (base URLs, perhaps with a path prefix), which pulls try
first, in order; pushes never use them. An https mirror is checked like a registry, by
its own host: system CAs plus `certs.d/MIRRORHOST[:PORT]/`, unverified when that host is
insecure. An http mirror is used as written: the operator chose plain HTTP.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ferryd.errors import ConfigError
from ferryd.oci.reference import DEFAULT_DOMAIN

DOCKER_HUB_HOST = "registry-1.docker.io"
DEFAULT_INSECURE = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One way to reach a registry: a base URL and how to check its certificate."""

    domain: str  # the registry as references name it: docker.io, host:5000
    base_url: str  # https://registry-1.docker.io (a mirror's may have a path prefix)
    verify: ssl.SSLContext | bool = True
    insecure: bool = False
    mirror: bool = False

    @property
    def host(self) -> str:
        """`host[:port]` of the base URL: credentials never leave it."""
        return self.base_url.split("://", 1)[1].split("/", 1)[0]


@dataclass
class RegistryService:
    """Turns a registry domain into the endpoints to try, in order."""

    insecure_registries: list[str] = field(default_factory=lambda: list(DEFAULT_INSECURE))
    certs_dir: Path | None = None
    # Registry domain → mirror base URLs, tried in order before the registry by pulls.
    mirrors: Mapping[str, list[str]] = field(default_factory=dict)
    _networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(init=False)
    _hosts: set[str] = field(init=False)
    # Building a verifying context reads the system CA bundle (tens of ms): once is enough.
    _contexts: dict[tuple[str, bool], ssl.SSLContext] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        networks, hosts = split_insecure(self.insecure_registries)
        self._networks = networks
        self._hosts = set(hosts)

    async def endpoints(self, domain: str) -> list[Endpoint]:
        host = DOCKER_HUB_HOST if domain == DEFAULT_DOMAIN else domain
        if await self.is_insecure(host):
            return [
                Endpoint(
                    domain,
                    f"https://{host}",
                    verify=await self._tls(host, verify=False),
                    insecure=True,
                ),
                # Plain HTTP needs no TLS, but httpx makes a context for every client
                # it is not given one: give it the one we have (an SSL_CTX costs ms).
                Endpoint(
                    domain,
                    f"http://{host}",
                    verify=await self._tls("", verify=False),
                    insecure=True,
                ),
            ]
        return [Endpoint(domain, f"https://{host}", verify=await self._tls(host, verify=True))]

    async def mirror_endpoints(self, domain: str) -> list[Endpoint]:
        """The mirrors of `domain` (as references name it), in the configured order."""
        endpoints = []
        for url in self.mirrors.get(domain, []):
            base_url = url.rstrip("/")
            scheme, _, rest = base_url.partition("://")
            host = rest.split("/", 1)[0]
            if scheme == "http":
                endpoints.append(
                    Endpoint(
                        domain,
                        base_url,
                        verify=await self._tls("", verify=False),
                        insecure=True,
                        mirror=True,
                    )
                )
                continue
            insecure = await self.is_insecure(host)
            context = await self._tls(host, verify=not insecure)
            endpoints.append(
                Endpoint(domain, base_url, verify=context, insecure=insecure, mirror=True)
            )
        return endpoints

    async def is_insecure(self, host: str) -> bool:
        if self._listed(host):
            return True
        addresses = await _addresses(_hostname(host.lower()))
        return any(address in network for address in addresses for network in self._networks)

    def _listed(self, host: str) -> bool:
        """Whether the insecure list names `host`, its name, or its address if the name
        is one; a name that resolves into a listed network is `is_insecure`'s to find."""
        host = host.lower()
        name = _hostname(host)
        if host in self._hosts or name in self._hosts:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def prepare_tls(self) -> None:
        """Build now, before the daemon says it is ready, the TLS contexts its pulls will
        want: the two every registry without a certs.d directory shares, and the one of
        each certs.d host. A verifying context reads the system CA bundle (~35 ms of CPU
        here), which a daemon's first pull from a TLS registry would otherwise wait for.
        Blocking: call it before the loop serves anything, or in a worker thread."""
        self._context(("", True))
        self._context(("", False))
        for directory in self._certs_dirs():
            try:
                self._context((directory.name, not self._listed(directory.name)))
            except (ConfigError, OSError):
                continue  # a pull from that host will say what is wrong
        # The first TLS connection encodes its server name with the idna codec, whose
        # import (~1.5 ms) it would otherwise pay.
        "localhost".encode("idna")

    async def _tls(self, host: str, *, verify: bool) -> ssl.SSLContext:
        """The context for `host`, built in a worker thread if `prepare_tls` did not:
        a verifying one would hold the event loop tens of ms."""
        # Hosts with nothing of their own in certs.d share one context of each kind:
        # building a verifying one reads the system CA bundle (tens of ms).
        key = (host if self._certs_for(host) is not None else "", verify)
        context = self._contexts.get(key)
        if context is None:
            context = await anyio.to_thread.run_sync(self._context, key)
        return context

    def _context(self, key: tuple[str, bool]) -> ssl.SSLContext:
        """The context of `key` (a certs.d host, or "" for the shared ones; whether it
        verifies), built once."""
        if key not in self._contexts:
            host, verify = key
            self._contexts[key] = self._new_tls(self._certs_for(host), verify=verify)
        return self._contexts[key]

    def _new_tls(self, directory: Path | None, *, verify: bool) -> ssl.SSLContext:
        context = ssl.create_default_context() if verify else _unverified_context()
        if directory is None:
            return context
        for path in sorted(directory.iterdir()):
            if path.suffix == ".crt" and verify:
                try:
                    context.load_verify_locations(cafile=str(path))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot load CA certificate {path}: {exc}") from None
            elif path.suffix == ".cert":
                key = path.with_suffix(".key")
                if not key.exists():
                    raise ConfigError(f"client certificate {path} has no matching key {key.name}")
                try:
                    context.load_cert_chain(str(path), str(key))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot load client certificate {path}: {exc}") from None
        return context

    def _certs_dirs(self) -> list[Path]:
        """The host directories of certs.d; none when it cannot be read (a pull that
        needs one says why)."""
        if self.certs_dir is None:
            return []
        try:
            return sorted(path for path in self.certs_dir.iterdir() if path.is_dir())
        except OSError:
            return []

    def _certs_for(self, host: str) -> Path | None:
        if self.certs_dir is None or not host:
            return None
        directory = self.certs_dir / host
        return directory if directory.is_dir() else None


def split_insecure(
    entries: list[str],
) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], list[str]]:
    """`insecure_registries` entries as networks (CIDRs, addresses) and host names.

    An entry is a CIDR (`10.0.0.0/8`), an IP address, or `HOST[:PORT]` (a host name or
    address, `[v6]` in brackets with a port); an `http://` or `https://` in front and a
    `/` behind are dropped. Anything else is a ConfigError naming the entry.
    """
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    hosts: list[str] = []
    for written in entries:
        entry = written.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if not entry:
            raise ConfigError("insecure registry entry is empty")
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not _is_host_and_port(entry):
                raise ConfigError(
                    f'{json.dumps(written)} is not a network ("10.0.0.0/8"), an IP address '
                    "or HOST[:PORT] (a valid host name or address, a port from 1 to 65535)"
                ) from None
            hosts.append(entry.lower())
    return networks, hosts


_HOST_LABEL = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def _is_host_and_port(entry: str) -> bool:
    """`host`, `host:port`, `1.2.3.4:port` or `[v6]:port`: a valid name or address and,
    if there is one, a port from 1 to 65535."""
    if entry.startswith("["):
        address, bracket, port = entry[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return False
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return False
        return not port or _is_port(port[1:])
    host, colon, port = entry.partition(":")
    if colon and not _is_port(port):
        return False  # a second colon is not a port either
    if len(host) > 253:
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _unverified_context() -> ssl.SSLContext:
    """A client context that checks nothing: no CA bundle to read (it would go unused)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _hostname(host: str) -> str:
    """`host` without its port; IPv6 brackets removed."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _addresses(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(name)]
    except ValueError:
        pass
    if name == "localhost":
        return [ipaddress.ip_address("127.0.0.1")]
    # Like dockerd, look the name up so that a name for a loopback address counts too;
    # a name that does not resolve is simply not insecure.
    try:
        infos = await anyio.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0]) for info in infos]
