"""Talking to registries: endpoints, logins, credentials, and the distribution API client."""
