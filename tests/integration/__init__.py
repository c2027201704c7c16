"""Integration tests against the real services that scripts/services.sh runs."""
