"""Save and load: images out of the store and into it as archives, without a registry.

An archive is a tar that holds docker's `manifest.json` form and an OCI image layout
at once (`layout`), written as the client reads it (`save`) and read as it streams in
(`load`, with `intake` staging and hashing each entry on the way and `tarstream`
parsing the tar).
"""

from ferryd.distribution.archives.load import LoadedImage, StreamLine, load_archive
from ferryd.distribution.archives.save import Export, prepare_export

__all__ = ["Export", "LoadedImage", "StreamLine", "load_archive", "prepare_export"]
