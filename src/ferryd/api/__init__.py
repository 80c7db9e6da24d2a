"""The Docker-Engine-shaped HTTP API on the Unix socket."""
