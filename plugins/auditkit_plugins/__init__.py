"""auditkit's first-party plugins: checks, model sources and dataset sources, registered through
the same hooks a third-party plugin uses."""
