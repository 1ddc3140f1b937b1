"""The digest of the sources simcore is built from.

setup.py records it in what it builds (``simcore/_build_info.py``, written into the build, never
into the tree); an unbuilt source folder (a clone's root) compares it with the digest of its own
sources before it hands over to the installed copy (``simcore/__init__.py``). Standard library
only, and nothing of simcore's: setup.py runs this file before anything is built.
"""
import glob
import hashlib
import os

# The files a build is made from, relative to the repository's root.
PATTERNS = ("setup.py", "simcore/*.py", "simcore/*.pyx", "simcore/*.pxd", "simcore/*.pyi",
            "csrc/*.c", "csrc/*.h", "csrc/*.def")
RECORD = "_build_info.py"  # the generated module holding the digest (not a source)


def digest(root: str) -> str:
    """SHA-256 over the files PATTERNS names under ``root``, in sorted order: each file's
    path (with /), its size and its bytes."""
    found = {os.path.relpath(p, root).replace(os.sep, "/")
             for pattern in PATTERNS for p in glob.glob(os.path.join(root, pattern))}
    h = hashlib.sha256()
    for name in sorted(found - {"simcore/" + RECORD}):
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def record(digest_hex: str) -> str:
    """The text of ``simcore/_build_info.py`` for a build of sources with this digest."""
    return ('"""Written by setup.py at build time: the digest of the sources this copy was '
            'built from (simcore/_sources.py)."""\n'
            f'SOURCE_DIGEST = "{digest_hex}"\n')


def recorded(folder: str):
    """The digest recorded in the built package in ``folder``, or None (no record: a build
    in place, or one made before builds recorded their sources)."""
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    # read, not imported: this runs before either copy of simcore is in sys.modules
    for line in text.splitlines():
        if line.startswith("SOURCE_DIGEST = "):
            return line.split("=", 1)[1].strip().strip('"')
    return None
