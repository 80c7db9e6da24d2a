"""Image references, parsed and normalised as docker does.

`alpine` → `docker.io/library/alpine:latest`; `host:5000/ns/repo:tag`;
`repo@sha256:…`; `repo:tag@sha256:…` (the digest wins when pulling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferryd.errors import InvalidDigestError, InvalidReferenceError
from ferryd.oci.digest import Digest, parse_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# The longest repository path (`library/alpine`, without the domain) a registry accepts,
# as distribution/reference's RepositoryNameTotalLengthMax.
_MAX_NAME_LENGTH = 255

# distribution/reference's grammar. Go's `\w` is ASCII, so it is spelt out here: Python's
# would take any Unicode letter. Every pattern is used with `fullmatch`: `$` would let a
# trailing newline through.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
_DOMAIN_RE = re.compile(_DOMAIN)
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(_TAG)
_HEX64 = re.compile(r"[a-f0-9]{64}")
_PORT = re.compile(r"(?<!:):(?P<port>[0-9]+)$")  # host:port, [v6]:port; not inside [v6]


@dataclass(frozen=True, slots=True)
class Reference:
    """A fully qualified reference: registry domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """`docker.io/library/alpine`: the repository with its domain."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def familiar_name(self) -> str:
        """The repository as docker shows it: `alpine`, `user/app`, `host:5000/app`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        prefix = OFFICIAL_NAMESPACE + "/"
        if self.path.startswith(prefix) and "/" not in self.path[len(prefix) :]:
            return self.path[len(prefix) :]
        return self.path

    @property
    def familiar(self) -> str:
        """The whole reference as docker shows it: `alpine:latest`."""
        text = self.familiar_name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.domain, self.path, None, digest)

    def repository(self) -> Reference:
        return Reference(self.domain, self.path)


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise `text` as docker does; a bare name gets the tag `latest`.

    Raises `InvalidReferenceError` naming what is wrong.
    """
    if not text:
        raise InvalidReferenceError("invalid reference format: the reference is empty")
    if _HEX64.fullmatch(text):
        raise InvalidReferenceError(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    match = _REFERENCE.fullmatch(text)
    if match is None:
        lowered = _REFERENCE.fullmatch(text.lower())
        if lowered is not None:
            name = text[: lowered.end("name")]
            raise InvalidReferenceError(
                f"invalid reference format: repository name ({name}) must be lowercase"
            )
        raise InvalidReferenceError(f"invalid reference format: {text!r}")
    name, tag, digest_text = match.group("name", "tag", "digest")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.fullmatch(domain) or not _PATH.fullmatch(path):
        raise InvalidReferenceError(f"invalid reference format: {text!r}")
    port = _PORT.search(domain)
    if port is not None and not 0 < int(port["port"]) <= 65535:
        raise InvalidReferenceError(
            f"invalid reference format: port {port['port']} of {domain} is not between 1 and 65535"
        )
    if len(path) > _MAX_NAME_LENGTH:
        raise InvalidReferenceError(
            "invalid reference format: repository name must not be more than "
            f"{_MAX_NAME_LENGTH} characters"
        )
    digest: Digest | None = None
    if digest_text is not None:
        try:
            digest = parse_digest(digest_text)
        except InvalidDigestError as exc:
            raise InvalidReferenceError(f"invalid reference {text!r}: {exc}") from None
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def parse_repository(text: str) -> Reference:
    """Parse a repository name without tag or digest (`docker push NAME`, `tag?repo=`)."""
    ref = parse_reference(text, default_tag=False)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidReferenceError(f"invalid repository name {text!r}: it has a tag or digest")
    return ref


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return domain, path
