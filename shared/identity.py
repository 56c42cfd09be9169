"""Identity values every layer may name, with no I/O and no web framework (``shared.auth`` serves them)."""

#: The project of a noauth request that names none (with Keystone, the token's project).
DEFAULT_PROJECT = "default"
