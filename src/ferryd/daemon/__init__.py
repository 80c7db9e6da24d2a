"""The running service: settings, logs, systemd, reload, its state, and the API it serves."""
