"""Every error ferryd raises on purpose, in one tree.

::

    FerrydError
    ├── ConfigError                    the config file or a flag is wrong
    ├── InvalidReferenceError          "not a valid image reference"
    ├── InvalidDigestError             a digest string that is not algorithm:hex
    ├── StoreError                     the local store
    │   ├── ImageNotFoundError         no such image / reference locally
    │   └── CorruptBlobError           a stored blob no longer matches its digest
    ├── RegistryError                  talking to a registry
    │   ├── RegistryUnreachableError   connection refused, TLS failure, timeout
    │   ├── AuthenticationError        401 / wrong credentials / token service refused
    │   │   └── CredentialHelperError  a docker-credential-* helper failed
    │   ├── AccessDeniedError          403
    │   ├── NotFoundError              404: repository, tag, manifest or blob unknown
    │   ├── TooManyRequestsError       429
    │   ├── TransientRegistryError     5xx, a cut connection: worth retrying
    │   └── RegistryProtocolError      the registry said something no registry should
    └── ContentError                   bytes that are not what they claim to be
        ├── DigestMismatchError        content does not hash to its digest
        ├── DiffIDMismatchError        a layer's uncompressed digest is not the config's
        ├── ManifestError              a manifest we cannot or will not use
        │   ├── UnsupportedManifestError   schema1, unknown media type
        │   ├── PlatformNotFoundError      an index without the platform asked for
        │   └── TooLargeError              over the size limit
        └── ImageConfigError           an image config we cannot or will not use

`retryable` says whether trying the same transfer again can help; the download and
upload managers use nothing else to decide.
"""

from __future__ import annotations


class FerrydError(Exception):
    """Base of all errors ferryd raises on purpose; `str()` is a message for a user."""

    retryable = False


class ConfigError(FerrydError):
    """The configuration (file or command line) is wrong."""


class InvalidReferenceError(FerrydError):
    """A string is not a valid image reference."""


class InvalidDigestError(FerrydError):
    """A string is not a valid `algorithm:hex` digest."""


class StoreError(FerrydError):
    """The local content store failed."""


class ImageNotFoundError(StoreError):
    """No image matches the name, ID or reference asked for."""


class CorruptBlobError(StoreError):
    """A stored blob no longer hashes to its digest."""


class RegistryError(FerrydError):
    """A registry refused a request or could not be reached."""


class RegistryUnreachableError(RegistryError):
    """The registry could not be reached at all (refused, TLS, DNS, timeout)."""

    retryable = True


class AuthenticationError(RegistryError):
    """The registry or its token service did not accept our credentials."""


class CredentialHelperError(AuthenticationError):
    """A docker credential helper is missing, failed, or answered nonsense."""


class AccessDeniedError(RegistryError):
    """The registry understood who we are and said no (403)."""


class NotFoundError(RegistryError):
    """The repository, tag, manifest or blob does not exist in the registry."""


class TooManyRequestsError(RegistryError):
    """The registry asked us to slow down (429)."""

    retryable = True


class TransientRegistryError(RegistryError):
    """A failure that may go away: 5xx, a cut connection, a stalled transfer."""

    retryable = True


class RegistryProtocolError(RegistryError):
    """The registry answered something that breaks the distribution protocol."""


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


class TooLargeError(ManifestError):
    """A manifest or config over its size limit."""


class ImageConfigError(ContentError):
    """An image config that is malformed, of a refused media type, or for another OS."""
