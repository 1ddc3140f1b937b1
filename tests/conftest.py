import os

import pytest


def pytest_sessionstart(session):
    # CI sets SIMCORE_REQUIRE_TORCH=1: the PyTorch parity tests must run, not skip.
    if os.environ.get("SIMCORE_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise pytest.UsageError(f"SIMCORE_REQUIRE_TORCH=1 but torch does not import: {e}")
