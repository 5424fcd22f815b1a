"""`certs`: a command-line client for the Certificates Domain API (API.md).

Standard library only, apart from minting a local token (PyJWT, through chalicelib), so that it
runs from any checkout's .venv against `make run` or a deployed stage.
"""

__version__ = "0.1.0"  # pyproject.toml's; tests/test_docs.py keeps them equal
