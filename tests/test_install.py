"""The README's commands work from the root of a clone: there `python -m simcore.<verb>`
finds the unbuilt source folder first, and it hands over to the installed copy if that
copy was built from the same sources; else it stops with a one-line message."""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import simcore
from simcore import _sources

INSTALLED = os.path.dirname(simcore.__file__)
REPO = Path(__file__).resolve().parents[1]
BUILT_FILES = ("*.so", "*.pyd", "_kernels.c", "__pycache__", _sources.RECORD)  # not sources


def _built(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "_kernels*")))


needs_build = pytest.mark.skipif(not _built(INSTALLED), reason="simcore is not built here")


def env_without_pythonpath(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


def unbuilt_clone(root: Path) -> Path:
    """``root``/simcore: simcore's sources without their compiled kernels (a clone's root)."""
    shutil.copytree(INSTALLED, root / "simcore", ignore=shutil.ignore_patterns(*BUILT_FILES))
    return root


def installed_from(clone: Path, site: Path, *, record: bool = True) -> Path:
    """``site``/simcore: the built package, as `pip install .` in ``clone`` puts it in
    site-packages, with the digest of the clone's sources that setup.py records."""
    shutil.copytree(INSTALLED, site / "simcore",
                    ignore=shutil.ignore_patterns("__pycache__", _sources.RECORD))
    if record:
        (site / "simcore" / _sources.RECORD).write_text(_sources.record(_sources.digest(str(clone))))
    return site


def run(args, cwd, env):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
@needs_build
@pytest.mark.parametrize("verb", ["train", "generate", "evaluate", "serve"])
def test_python_m_from_a_clone_root_uses_the_copy_installed_from_its_sources(tmp_path, verb):
    clone = unbuilt_clone(tmp_path / "clone")
    site = installed_from(clone, tmp_path / "site")
    env = env_without_pythonpath(PYTHONPATH=str(site))  # the built copy (site-packages)
    p = run(["-m", f"simcore.{verb}", "--help"], clone, env)
    assert p.returncode == 0, p.stderr
    assert "usage: python -m simcore." + verb in p.stdout
    q = run(["-c", "import simcore, simcore.train; print(simcore.__file__); print(simcore.train.__file__)"],
            clone, env)
    assert q.returncode == 0, q.stderr
    assert all(line.startswith(str(site / "simcore")) for line in q.stdout.split())


@pytest.mark.slow
@needs_build
@pytest.mark.parametrize("edit", ["simcore/model.py", "csrc/attention.c", "simcore/new_module.py"])
def test_a_clone_edited_since_its_install_stops_in_one_line_saying_to_install_again(tmp_path, edit):
    clone = unbuilt_clone(tmp_path / "clone")
    site = installed_from(clone, tmp_path / "site")
    (clone / edit).parent.mkdir(exist_ok=True)
    with open(clone / edit, "a") as f:
        f.write("\n# an edit made after `pip install .`\n")
    p = run(["-m", "simcore.train", "--help"], clone, env_without_pythonpath(PYTHONPATH=str(site)))
    assert p.returncode != 0 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # python -m: no traceback
    assert "built from other sources" in p.stderr
    assert "run `pip install .` there again (or `pip install -e .` to develop)" in p.stderr


@pytest.mark.slow
@needs_build
def test_an_installed_copy_that_recorded_no_sources_is_not_run_from_a_clone(tmp_path):
    """A copy built before builds recorded their sources (or built in place) may be stale."""
    clone = unbuilt_clone(tmp_path / "clone")
    site = installed_from(clone, tmp_path / "site", record=False)
    p = run(["-c", "import simcore"], clone, env_without_pythonpath(PYTHONPATH=str(site)))
    assert p.returncode != 0
    assert "ImportError: the simcore installed in" in p.stderr and "pip install ." in p.stderr


def test_the_source_digest_covers_the_build_inputs_and_nothing_else(tmp_path):
    for name in ("setup.py", "simcore/a.py", "simcore/b.pyx", "csrc/c.c", "csrc/d.h", "README.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    before = _sources.digest(str(tmp_path))
    for generated in ("README.md", "simcore/_kernels.c", "simcore/" + _sources.RECORD, "simcore/x.so",
                      "simcore/__pycache__/a.cpython-311.pyc"):
        (tmp_path / generated).parent.mkdir(exist_ok=True)
        (tmp_path / generated).write_text("anything")
    assert _sources.digest(str(tmp_path)) == before
    (tmp_path / "csrc/d.h").write_text("changed")
    assert _sources.digest(str(tmp_path)) != before
    (tmp_path / "csrc/d.h").write_text("csrc/d.h")
    (tmp_path / "csrc/d.h").rename(tmp_path / "csrc/e.h")  # same bytes, another name
    assert _sources.digest(str(tmp_path)) != before


def test_unbuilt_sources_with_no_build_anywhere_say_how_to_install(tmp_path):
    clone = unbuilt_clone(tmp_path)
    # -S: no site-packages, so the only simcore is the unbuilt one
    p = run(["-S", "-c", "import simcore"], clone, env_without_pythonpath())
    assert p.returncode != 0
    assert "pip install ." in p.stderr


def test_unbuilt_sources_name_a_pip_that_installs_for_another_python(tmp_path):
    """`pip install . && python -m simcore.train` with a `pip` of another interpreter
    first on PATH (a system pip beside a pyenv python): the error says so."""
    clone = unbuilt_clone(tmp_path)
    bin_dir = tmp_path / "otherbin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text("#!/opt/other/bin/python3.9\nimport sys\n")
    (bin_dir / "pip").chmod(0o755)
    env = env_without_pythonpath(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    p = run(["-S", "-c", "import simcore"], clone, env)
    assert p.returncode != 0
    assert "installs for another Python (/opt/other/bin/python3.9)" in p.stderr
    assert "python3 -m venv .venv" in p.stderr and f"{sys.executable} -m pip install ." in p.stderr


def site_packages_without_simcore(deps: Path) -> Path:
    """``deps``: links to what this Python's site-packages holds (numpy, ...), except simcore."""
    deps.mkdir()
    site = os.path.dirname(os.path.dirname(np.__file__))
    for name in os.listdir(site):
        if not name.startswith(("simcore", "__editable__.simcore", "__editable___simcore")):
            os.symlink(os.path.join(site, name), deps / name)
    return deps


@pytest.mark.slow
@needs_build
def test_an_installed_copy_reached_only_through_an_import_finder_takes_over(tmp_path):
    """Editable installs and other packagers reach a package through a sys.meta_path
    finder, not through a folder on sys.path: the unbuilt sources hand over to it too."""
    clone = unbuilt_clone(tmp_path / "clone")
    site = installed_from(clone, tmp_path / "site")
    deps = site_packages_without_simcore(tmp_path / "deps")
    # -S and deps: no simcore on sys.path; a finder that maps the top-level name only
    # (as setuptools' editable finder does) is the one way to the built copy; then
    # what python -m does
    program = (
        "import importlib.machinery, os, runpy, sys\n"
        f"sys.path.append({str(deps)!r})\n"
        "class Finder:\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        if name != 'simcore':\n"
        "            return None\n"
        f"        return importlib.machinery.PathFinder.find_spec(name, [{str(site)!r}])\n"
        "sys.meta_path.append(Finder)\n"
        "sys.path.insert(0, os.getcwd())\n"
        "sys.argv = ['-m', '--help']\n"
        "runpy.run_module('simcore.train', run_name='__main__', alter_sys=True)\n")
    p = run(["-S", "-c", program], clone, env_without_pythonpath())
    assert p.returncode == 0, p.stderr
    assert "usage: python -m simcore.train" in p.stdout


def pip_install(venv_python: Path, clone: Path) -> None:
    # the build tools of this environment when it has them (no network), else pip's own
    have_tools = all(importlib.util.find_spec(m) for m in ("Cython", "setuptools", "wheel"))
    args = ["-m", "pip", "install", "-q", "--no-deps"] + (["--no-build-isolation"] if have_tools else []) + ["."]
    p = subprocess.run([str(venv_python), *args], cwd=clone, env=env_without_pythonpath(),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_pip_install_then_an_edit_then_pip_install_again_in_a_clone(tmp_path):
    """The whole story, for real: `pip install .` in a clone's root, then `python -m
    simcore.train` there runs the installed copy; after an edit it stops and says to
    install again; after `pip install .` it runs the edited code."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "csrc", clone / "csrc")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, clone / name)
    shutil.copytree(REPO / "simcore", clone / "simcore",
                    ignore=shutil.ignore_patterns(*BUILT_FILES))
    # a new environment that sees this one's packages (numpy, Cython, pip, ...) but no simcore
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(str(site_packages_without_simcore(tmp_path / "deps")) + "\n")

    def in_clone(*args):
        return subprocess.run([str(python), *args], cwd=clone, env=env_without_pythonpath(),
                              capture_output=True, text=True)

    pip_install(python, clone)
    p = in_clone("-m", "simcore.train", "--help")
    assert p.returncode == 0 and "usage: python -m simcore.train" in p.stdout, p.stderr
    p = in_clone("-c", "import simcore.serve as s; print(s.__file__, len(s.page()))")  # the page is package data
    assert p.returncode == 0 and p.stdout.startswith(purelib) and int(p.stdout.split()[-1]) > 1000, p.stderr
    assert not (clone / "simcore" / _sources.RECORD).exists()  # written into the build only

    with open(clone / "simcore" / "model.py", "a") as f:
        f.write("\nEDITED = True\n")
    p = in_clone("-m", "simcore.train", "--help")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "run `pip install .` there again" in p.stderr

    pip_install(python, clone)
    p = in_clone("-c", "import simcore.model as m; print(m.EDITED, m.__file__)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("True " + purelib)
