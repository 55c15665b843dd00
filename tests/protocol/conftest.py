"""The protocol tests reuse the crypto tests' seeded household (owner, admin, two robots)."""

from tests.crypto.conftest import admin_keys, home, rng

__all__ = ["admin_keys", "home", "rng"]
