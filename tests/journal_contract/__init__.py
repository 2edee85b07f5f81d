"""The journal backend contract and the Redis backend's own tests (a package, so that its conftest does not
shadow the suite's top-level ``conftest`` module)."""
