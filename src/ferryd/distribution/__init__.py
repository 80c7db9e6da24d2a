"""The seed's contract: pull and push configs, the download manager, progress."""
