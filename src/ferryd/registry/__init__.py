"""Talking to registries: endpoints, auth, manifests and blobs (OCI distribution spec)."""
