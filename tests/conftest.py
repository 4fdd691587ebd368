"""Shared test set-up: quiet TensorFlow logs, fresh random data per test."""

import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name: fresh data per test, reproducible runs
    (crc32, not hash(): str hashes are salted per process)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
