"""The README's commands work from the root of a clone: there `python -m simcore.<verb>`
finds the unbuilt source folder first, and it must hand over to the installed copy."""
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import simcore

INSTALLED = os.path.dirname(simcore.__file__)


def _built(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "_kernels*")))


@pytest.mark.slow
@pytest.mark.skipif(not _built(INSTALLED), reason="simcore is not built here")
@pytest.mark.parametrize("verb", ["train", "generate", "evaluate"])
def test_python_m_from_a_folder_holding_unbuilt_sources_uses_the_installed_build(tmp_path, verb):
    # a clone's root: simcore/ with the Python sources only, no compiled kernels
    shutil.copytree(INSTALLED, tmp_path / "simcore",
                    ignore=shutil.ignore_patterns("_kernels*", "__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.dirname(INSTALLED)  # where the built copy lives (site-packages)
    p = subprocess.run([sys.executable, "-m", f"simcore.{verb}", "--help"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "usage: python -m simcore." + verb in p.stdout
    q = subprocess.run([sys.executable, "-c", "import simcore, simcore.train; "
                        "print(simcore.__file__); print(simcore.train.__file__)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert q.returncode == 0, q.stderr
    assert all(line.startswith(INSTALLED) for line in q.stdout.split())


def test_unbuilt_sources_with_no_build_anywhere_say_how_to_install(tmp_path):
    shutil.copytree(INSTALLED, tmp_path / "simcore",
                    ignore=shutil.ignore_patterns("_kernels*", "__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site-packages, so the only simcore is the unbuilt one
    p = subprocess.run([sys.executable, "-S", "-c", "import simcore"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "pip install ." in p.stderr


def test_unbuilt_sources_name_a_pip_that_installs_for_another_python(tmp_path):
    """`pip install . && python -m simcore.train` with a `pip` of another interpreter
    first on PATH (a system pip beside a pyenv python): the error says so."""
    shutil.copytree(INSTALLED, tmp_path / "simcore",
                    ignore=shutil.ignore_patterns("_kernels*", "__pycache__", "*.so"))
    bin_dir = tmp_path / "otherbin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text("#!/opt/other/bin/python3.9\nimport sys\n")
    (bin_dir / "pip").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    p = subprocess.run([sys.executable, "-S", "-c", "import simcore"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "installs for another Python (/opt/other/bin/python3.9)" in p.stderr
    assert "python3 -m venv .venv" in p.stderr and f"{sys.executable} -m pip install ." in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _built(INSTALLED), reason="simcore is not built here")
def test_an_installed_copy_reached_only_through_an_import_finder_takes_over(tmp_path):
    """Editable installs and other packagers reach a package through a sys.meta_path
    finder, not through a folder on sys.path: the unbuilt sources hand over to it too."""
    clone, deps = tmp_path / "clone", tmp_path / "deps"
    shutil.copytree(INSTALLED, clone / "simcore",
                    ignore=shutil.ignore_patterns("_kernels*", "__pycache__", "*.so"))
    deps.mkdir()  # what site-packages holds (numpy, ...) except simcore itself
    site = os.path.dirname(os.path.dirname(np.__file__))
    for name in os.listdir(site):
        if not name.startswith("simcore"):
            os.symlink(os.path.join(site, name), deps / name)
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
        f"        return importlib.machinery.PathFinder.find_spec(name, [{os.path.dirname(INSTALLED)!r}])\n"
        "sys.meta_path.append(Finder)\n"
        "sys.path.insert(0, os.getcwd())\n"
        "sys.argv = ['-m', '--help']\n"
        "runpy.run_module('simcore.train', run_name='__main__', alter_sys=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-S", "-c", program], cwd=clone, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "usage: python -m simcore.train" in p.stdout
