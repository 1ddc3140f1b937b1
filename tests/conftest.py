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


@pytest.fixture(scope="session")
def _mnist_arrays():
    return {}


@pytest.fixture(scope="module")
def mnist_read_once(_mnist_arrays):
    """While a module runs, each MNIST file of $SIMCORE_DATA is read once per session:
    every training or evaluation command a CLI test runs would otherwise unzip and check
    the 55 MB again. Each call gets its own copy, as from a fresh read; files elsewhere
    (a test's own) are read as usual."""
    from simcore import data

    folder = os.environ.get("SIMCORE_DATA")
    if not folder:
        yield
        return
    folder = os.path.realpath(folder)

    def read_once(read):
        def cached(path, *args, **kwargs):
            if os.path.realpath(os.path.dirname(os.path.abspath(path))) != folder or not os.path.isfile(path):
                return read(path, *args, **kwargs)
            st = os.stat(path)  # a file changed on disk is read again
            key = (read.__name__, os.path.realpath(path), st.st_size, st.st_mtime_ns, args,
                   tuple(sorted(kwargs.items())))
            if key not in _mnist_arrays:
                _mnist_arrays[key] = read(path, *args, **kwargs)
            return _mnist_arrays[key].copy()
        return cached

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "load_idx_images", read_once(data.load_idx_images))
        mp.setattr(data, "load_idx_labels", read_once(data.load_idx_labels))
        yield
