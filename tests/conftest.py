import os

import pytest


def pytest_sessionstart(session):
    # CI sets SIMCORE_REQUIRE_TORCH=1: the PyTorch parity tests must run, not skip.
    if os.environ.get("SIMCORE_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise pytest.UsageError(f"SIMCORE_REQUIRE_TORCH=1 but torch does not import: {e}")


def _levels() -> list[str]:
    """The vector levels to test: every one this CPU runs, up to the level in use
    (so SIMCORE_ISA=avx2 caps the tests too)."""
    import simcore

    levels = simcore.cpu_info()["supported"]
    return levels[: levels.index(simcore.get_isa()) + 1]


@pytest.fixture(params=_levels())
def at_every_isa(request):
    """Run the test once per vector level (`pytestmark = pytest.mark.usefixtures(...)`
    in the kernel, model and sampling tests): the AVX2 and baseline builds of the
    kernels are proven on an AVX-512 machine too."""
    import simcore

    before = simcore.get_isa()
    simcore.set_isa(request.param)
    yield request.param
    simcore.set_isa(before)
