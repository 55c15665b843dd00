"""The API tests serve the context tests' household robot."""

from tests.context.conftest import home

__all__ = ["home"]
