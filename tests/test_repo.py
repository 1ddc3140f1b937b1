"""What the repository commits: its benchmark reports and CI script name paths relative to
the repository or the home folder, never the folders of the machine they ran on."""
import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("benchmarks/results", ".ci")

# An absolute path of a machine: its scratch, home or work folders, or any installed
# Python environment. A slash after a word, a dot or a variable starts no absolute path
# (GB/s, ../x, $repo/x); system paths the same everywhere (/usr/lib/...) are allowed.
MACHINE_PATH = re.compile(
    r"(?<![\w.~$}/-])/(?:work|root|tmp|home|Users|mnt|scratch|private|var/folders)/"
    r"|(?<![\w.~$}/-])/\S*/(?:site|dist)-packages/")


def _committed(folder: str) -> list[Path]:
    """The files git tracks under folder, or every file there without git."""
    if shutil.which("git") and (REPO / ".git").exists():
        p = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", folder],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return [REPO / name for name in p.stdout.split("\0") if name]
    return [Path(root) / f for root, _, files in os.walk(REPO / folder) for f in files]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary (or deleted) file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _machine_paths(text: str) -> list[str]:
    return [line.strip()[:160] for line in text.splitlines() if MACHINE_PATH.search(line)]


def test_the_machine_path_pattern_tells_absolute_paths_from_relative_ones():
    # (the examples are spelled /{tmp}/... so that this file itself names no such path)
    tmp, root, work, home = "tmp", "root", "work", "home"
    for bad in [f"--out-dir /{tmp}/res15", f'"file": "/{root}/.cache/simcore/judge-v1.safetensors"',
                f"file /{work}/venv/lib/python3.11/site-packages/scipy.libs/x.so", f"`/{home}/me/simcore/runs`",
                "/opt/venv/lib/python3.11/site-packages/scipy.libs/x.so"]:
        assert _machine_paths(bad), bad
    for good in ["--out-dir benchmarks/results/avx2", "~/.cache/simcore/judge-v1.safetensors",
                 "site-packages/scipy.libs/x.so", '"$repo/../shared/mnist"', "34 GB/s, 1 -> 2 threads",
                 f"../../{tmp}/runs15", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"]:
        assert not _machine_paths(good), good


@pytest.mark.parametrize("folder", CHECKED)
def test_committed_reports_and_ci_name_no_absolute_path_of_a_machine(folder):
    if not (REPO / folder).is_dir():
        pytest.skip(f"{folder} is not here (an installed copy, not a clone)")
    found = {}
    for path in _committed(folder):
        text = _text(path)
        if text is not None and _machine_paths(text):
            found[str(path.relative_to(REPO))] = _machine_paths(text)[:3]
    assert not found, f"absolute paths of a machine (name them relative to the repository or ~): {found}"


def test_a_benchmark_report_names_paths_relative_to_the_repository_or_home(tmp_path, monkeypatch):
    if not (REPO / "benchmarks" / "report.py").exists():
        pytest.skip("benchmarks/ is not here (an installed copy, not a clone)")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    report = importlib.import_module("report")
    home = Path.home()
    results = {
        "command": f"python benchmarks/judge.py --checkpoint {tmp_path / 'runs'} --out-dir {REPO / 'out'}",
        "blas": "/opt/venv/lib/python3.11/site-packages/scipy.libs/libscipy_openblas.so",
        "judge": str(home / ".cache" / "simcore" / "judge-v2.safetensors"),
        "folder": tmp_path / "runs" / "guided-s1",
        "checkpoint": str(REPO / "simcore" / "pretrained-mnist-guided.safetensors"),
        "system": "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    }
    report.write_json(tmp_path / "r.json", results)
    text = (tmp_path / "r.json").read_text()
    assert not _machine_paths(text), text
    out = json.loads(text)
    assert out["command"].endswith("--out-dir out")
    assert out["blas"] == "site-packages/scipy.libs/libscipy_openblas.so"
    if home.parent != home:
        assert out["judge"] == "~/.cache/simcore/judge-v2.safetensors"
    assert out["checkpoint"] == "simcore/pretrained-mnist-guided.safetensors"
    assert out["system"] == "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
