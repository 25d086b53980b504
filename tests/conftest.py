"""Shared fixtures: real media from registry packages, generated clips, model bundles, the local stack."""

pytest_plugins = [
    "tests.fixtures.media",
    "tests.fixtures.bundles",
    "tests.fixtures.stack",
]
