"""Reporters: each a plugin registered through ``auditkit_register_reporters``."""
