"""Every error ferryd raises on purpose, in one tree.

::

    FerrydError                        500 unless a subclass says otherwise
    ├── ConfigError                    the config file or a flag is wrong
    ├── BadRequestError            400 a request's parameter cannot be used
    │   ├── InvalidReferenceError      "not a valid image reference"
    │   ├── InvalidDigestError         a digest string that is not algorithm:hex
    │   ├── InvalidPlatformError       a platform that is not os[/arch[/variant]]
    │   └── InvalidFilterError         a `filters`, `since` or `until` that cannot be read
    ├── PermissionDeniedError      403 the client's user may not do what it asks ([access])
    ├── StoreError                     the local store
    │   ├── ImageNotFoundError     404 no such image / reference locally
    │   ├── ImageConflictError     409 a removal that needs `force`
    │   ├── IncompleteImageError   409 a push of an index some of whose manifests are not stored
    │   ├── CorruptBlobError           a stored blob no longer matches its digest
    │   ├── StoreInUseError            another ferryd holds the store's lock
    │   ├── StorageFullError           no space left where the store writes (ENOSPC, quota)
    │   ├── StoreReadOnlyError         the store cannot be written (permissions, ro mount)
    │   ├── DatabaseCorruptError       ferryd.db is damaged
    │   └── DatabaseLockedError        another process holds ferryd.db locked
    ├── RegistryError                  talking to a registry
    │   ├── RegistryUnreachableError   connection refused, TLS failure, timeout
    │   │   └── NoEndpointAnsweredError  ... on the first request to a registry: not retried
    │   ├── AuthenticationError    401 wrong credentials / token service refused
    │   │   ├── AuthorizationError     no login to answer Basic, or the token service said no
    │   │   ├── CredentialHelperError  a docker-credential-* helper failed
    │   │   └── InvalidRegistryAuthError 400 an X-Registry-Auth header that cannot be read
    │   ├── AccessDeniedError      403
    │   ├── NotFoundError          404 repository, tag, manifest or blob unknown
    │   ├── TooManyRequestsError   429
    │   ├── TransientRegistryError     5xx, a cut connection: worth retrying
    │   └── RegistryProtocolError      the registry said something no registry should
    │       ├── TooLargeError          an answer (manifest, config, token…) over its limit
    │       └── RangeNotSatisfiableError   416 to a resume: the partial file cannot be right
    ├── ContentError                   bytes that are not what they claim to be
    │   ├── DigestMismatchError        content does not hash to its digest
    │   ├── DiffIDMismatchError        a layer's uncompressed digest is not the config's
    │   ├── ManifestError              a manifest we cannot or will not use
    │   │   ├── UnsupportedManifestError   schema1, unknown media type
    │   │   ├── PlatformNotFoundError  404 an index without the platform asked for
    │   │   └── LayerFormatError       a layer the target manifest format cannot describe
    │   ├── ImageConfigError           an image config we cannot or will not use
    │   └── ArchiveError           400 an archive to load that is broken, hostile or cut short
    ├── NotSupportedError          501 what ferryd does not do (containers, builds…)
    ├── TransferCancelledError         a shared transfer stopped: nobody waits, or shutdown
    └── InternalError                  a bug: ferryd failed in a way it did not expect

`retryable` says whether trying the same transfer again can help; the download and
upload managers use nothing else to decide. `status` is the HTTP status the API answers
with (dockerd's for the same failure); the API maps errors to answers by nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
from collections.abc import Iterator
from typing import Self


class FerrydError(Exception):
    """Base of all errors ferryd raises on purpose; `str()` is a message for a user."""

    retryable = False
    status = 500

    def with_message(self, message: str) -> Self:
        """The same error (class and attributes) saying `message` instead."""
        reworded = copy.copy(self)
        reworded.args = (message,)
        return reworded


class ConfigError(FerrydError):
    """The configuration (file or command line) is wrong."""


class RequestTimeoutError(FerrydError):
    """The client stopped sending a body the daemon waits for."""

    status = 408


class PayloadTooLargeError(FerrydError):
    """A request body over the limit of its route."""

    status = 413


class ClientStalledError(FerrydError):
    """The client took no byte of a streamed answer for WRITE_IDLE_TIMEOUT seconds."""

    status = 408


class BadRequestError(FerrydError):
    """A request's parameter cannot be used; the client must change it."""

    status = 400


class InvalidReferenceError(BadRequestError):
    """A string is not a valid image reference."""


class InvalidDigestError(BadRequestError):
    """A string is not a valid `algorithm:hex` digest."""


class InvalidPlatformError(BadRequestError):
    """A platform string that is not `os[/arch[/variant]]`."""


class InvalidFilterError(BadRequestError):
    """A `filters`, `since` or `until` parameter dockerd would refuse too."""


class PermissionDeniedError(FerrydError):
    """Access control: the client's user and groups lack the permission the route needs
    (`[access]` in the settings); the message names the user and the permission."""

    status = 403


class StoreError(FerrydError):
    """The local content store failed."""


class ImageNotFoundError(StoreError):
    """No image matches the name, ID or reference asked for."""

    status = 404


class ImageConflictError(StoreError):
    """A removal that needs `force` (an image tagged in several repositories)."""

    status = 409


class IncompleteImageError(StoreError):
    """A push of a tag that names an index some of whose platforms are not stored: the
    message names them and the options that push less (`platform`, `reduced-index`)."""

    status = 409


class CorruptBlobError(StoreError):
    """A stored blob no longer hashes to its digest."""


class StoreInUseError(StoreError):
    """Another ferryd (a running daemon) holds the store's lock."""


class StorageFullError(StoreError):
    """No space left where the store writes (ENOSPC, a quota, SQLite's "disk is full").

    Never retried: the same write fails again until an operator frees space. Partial
    downloads are kept, so the pull resumes once there is room.
    """


class StoreReadOnlyError(StoreError):
    """The store cannot be written: permissions, or a filesystem mounted read-only."""


class DatabaseCorruptError(StoreError):
    """The store's SQLite database is damaged (SQLITE_CORRUPT, SQLITE_NOTADB)."""


class DatabaseLockedError(StoreError):
    """Another process keeps the store's SQLite database locked."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def disk_error(exc: OSError, path: object, root: object | None = None) -> StoreError | None:
    """The store error an operator can act on for a failed write to `path` under `root`
    (default: its directory), or None when `exc` is not the disk's fault (a bug)."""
    where = root if root is not None else os.path.dirname(str(path))
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        room = f"under {root}" if root is not None else f"on the filesystem holding {where}"
        return StorageFullError(
            f"disk full: no space left on device writing {path}; free space {room} "
            "(`ferryd rmi` removes images)"
        )
    if exc.errno in _READ_ONLY:
        return StoreReadOnlyError(
            f"cannot write {path}: {reason}; the daemon must be able to write {where} "
            "(check its owner and mode, and that the filesystem is mounted read-write)"
        )
    if exc.errno == errno.EIO:
        return StoreError(
            f"I/O error writing {path}: the disk under {where} is failing (see the kernel log)"
        )
    return None


@contextlib.contextmanager
def disk_errors(path: object, root: object | None = None) -> Iterator[None]:
    """An OSError the disk is to blame for (full, read-only, failing) becomes the
    `StoreError` that tells the operator what to do (`disk_error`); any other goes on."""
    try:
        yield
    except OSError as exc:
        error = disk_error(exc, path, root)
        if error is None:
            raise
        raise error from None


class RegistryError(FerrydError):
    """A registry refused a request or could not be reached."""

    # Seconds the registry asked us to wait before trying again (its Retry-After).
    retry_after: float | None = None
    # The registry's refusal in its own words, as dockerd quotes them (`denied: requested
    # access to the resource is denied`); "" when it said nothing to quote.
    reason: str = ""


class RegistryUnreachableError(RegistryError):
    """The registry could not be reached at all (refused, TLS, DNS, timeout)."""

    retryable = True


class NoEndpointAnsweredError(RegistryUnreachableError):
    """Not one endpoint of a registry answered the first request made to it (dockerd's
    failed ping): the pull or push ends at once, as dockerd's does, instead of retrying
    each of its layers for a minute. A registry that answered before and fails now is
    a RegistryUnreachableError, retried."""

    retryable = False


class AuthenticationError(RegistryError):
    """The registry or its token service did not accept our credentials."""

    status = 401


class AuthorizationError(AuthenticationError):
    """A request that could not be given its Authorization: no login to answer a Basic
    challenge with, or the token service refused the one given. The registry itself was
    never asked, and dockerd reports the request as failed (`Get "URL": no basic auth
    credentials`) rather than as the registry's refusal."""


class CredentialHelperError(AuthenticationError):
    """A docker credential helper is missing, failed, or answered nonsense."""

    # The daemon's own login store failed, not the client's login: a 401 would have the
    # docker CLI prompt for a login that cannot help.
    status = 500


class InvalidRegistryAuthError(AuthenticationError):
    """An `X-Registry-Auth` header (or a login entry) that cannot be decoded: the
    client's mistake, not the registry's refusal."""

    status = 400


class AccessDeniedError(RegistryError):
    """The registry understood who we are and said no (403)."""

    status = 403


class NotFoundError(RegistryError):
    """The repository, tag, manifest or blob does not exist in the registry."""

    status = 404


class TooManyRequestsError(RegistryError):
    """The registry asked us to slow down (429)."""

    retryable = True
    status = 429


class TransientRegistryError(RegistryError):
    """A failure that may go away: 5xx, a cut connection, a stalled transfer."""

    retryable = True


class RegistryProtocolError(RegistryError):
    """The registry answered something that breaks the distribution protocol."""


class TooLargeError(RegistryProtocolError):
    """An answer (manifest, config, tag list, token, …) over its size limit, counted after
    any Content-Encoding is undone."""


class RangeNotSatisfiableError(RegistryProtocolError):
    """The registry refused to resume a download from where the partial file ends (416):
    its blob is shorter than what was kept, so the partial file is dropped."""


class ContentError(FerrydError):
    """Bytes that are not what they claim to be."""


class DigestMismatchError(ContentError):
    """Content does not hash to the digest it was fetched by."""


class DiffIDMismatchError(ContentError):
    """A layer's uncompressed content does not match the DiffID in the image config."""


class ManifestError(ContentError):
    """A manifest ferryd cannot or will not use."""


class UnsupportedManifestError(ManifestError):
    """A manifest media type ferryd refuses (schema1) or does not know."""


class PlatformNotFoundError(ManifestError):
    """An image index that has no manifest for the platform asked for."""

    status = 404


class LayerFormatError(ManifestError):
    """A layer the manifest format being pushed has no media type for (zstd in schema2)."""


class ImageConfigError(ContentError):
    """An image config that is malformed, of a refused media type, or for another OS."""


class ArchiveError(ContentError):
    """An image archive (`docker load`) that is broken, hostile or cut short: the client
    sent it, so it is the client's to fix (400). Nothing of it is stored."""

    status = 400


class NotSupportedError(FerrydError):
    """A request for something ferryd does not do: it manages images only."""

    status = 501


class TransferCancelledError(FerrydError):
    """A shared transfer stopped before it finished: its last client went away, or the
    daemon is stopping. Its partial download is kept for the next attempt."""

    retryable = True


class InternalError(FerrydError):
    """ferryd failed in a way it did not expect: a bug, reported instead of a crash."""
