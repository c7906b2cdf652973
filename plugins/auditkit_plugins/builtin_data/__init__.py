"""Built-in, offline, deterministic datasets shipped with auditkit (generated from the standard library only)."""
