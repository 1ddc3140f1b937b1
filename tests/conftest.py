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


def pytest_generate_tests(metafunc):
    # at_every_isa: one run per level, unless the test is marked one_level (its result
    # cannot depend on the level: it checks arguments or Python code and runs no kernel
    # whose output it compares), which then runs once at the level in use.
    if "at_every_isa" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("one_level"):
        metafunc.parametrize("at_every_isa", _levels(), indirect=True)


@pytest.fixture
def at_every_isa(request):
    """Run the test once per vector level (`pytestmark = pytest.mark.usefixtures(...)`
    in the kernel, model and sampling tests): the AVX2 and baseline builds of the
    kernels are proven on an AVX-512 machine too. Tests there that cannot tell the
    levels apart carry `@pytest.mark.one_level` and run once."""
    import simcore

    before = simcore.get_isa()
    simcore.set_isa(getattr(request, "param", before))
    yield simcore.get_isa()
    simcore.set_isa(before)

