"""Pull, push, tag and remove, as moby's distribution package: contexts, transfer managers,
progress and image events."""
