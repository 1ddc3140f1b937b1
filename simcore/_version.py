"""The one version string: setup reads it (pyproject.toml, dynamic), simcore exports it."""
__version__ = "0.2.0"
