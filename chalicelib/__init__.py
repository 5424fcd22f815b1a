"""The deployed service (its version is the package's, pyproject.toml)."""

__version__ = "0.1.0"
