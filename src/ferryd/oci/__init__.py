"""The OCI vocabulary: digests, references, platforms, media types, manifests, image configs."""
