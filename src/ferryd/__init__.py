"""ferryd: pulls container images from OCI/Docker registries into a local store."""

__version__ = "0.1.0"

__all__ = ["__version__"]
