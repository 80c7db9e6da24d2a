"""The Docker-Engine-shaped HTTP API on the daemon's Unix socket."""
