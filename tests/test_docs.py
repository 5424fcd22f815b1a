"""The documentation a user reads agrees with the code it describes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chalicelib.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_the_configuration_table_names_every_setting_and_only_those() -> None:
    table = [
        line
        for line in _section(README, "## Configuration").splitlines()
        if line.startswith("| `CERTS_")
    ]
    documented = {
        name for line in table for name in re.findall(r"`(CERTS_[A-Z0-9_]+)`", line.split("|")[1])
    }
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented == settings, (
        f"missing: {sorted(settings - documented)}, not settings: {sorted(documented - settings)}"
    )


def test_the_configuration_table_gives_each_default_the_model_has() -> None:
    rows = {}
    for line in _section(README, "## Configuration").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0] == f"`{ENV_PREFIX}{cells[0][7:-1]}`":
            rows[cells[0].strip("`")] = cells[1]
    for name, field in Settings.model_fields.items():
        default = rows.get(ENV_PREFIX + name.upper())
        if default is None or isinstance(field.default, (str, type(None))) or not default:
            continue  # shared rows, text defaults described in words
        value = field.default
        if isinstance(value, bool):
            assert default.strip("`") == str(value).lower(), name
        elif isinstance(value, (int, float)):
            assert float(default.strip("`")) == value, name


def test_docs_stay_inside_the_repository() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text, path
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name} links to {target}"


def test_every_index_of_the_table_is_in_the_readme_and_the_design() -> None:
    resources = json.loads((ROOT / "infra" / "resources.json").read_text())
    indexes = {
        index["IndexName"]
        for resource in resources["Resources"].values()
        if resource.get("Type") == "AWS::DynamoDB::Table"
        for index in resource["Properties"].get("GlobalSecondaryIndexes", [])
        if "Fn::If" not in index  # kept only for an upgrade (docs/DEPLOY.md)
    }
    assert indexes
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    for name in indexes:
        assert f"`{name}`" in README, name
        assert f"`{name}`" in design, name


def test_every_route_is_in_the_api_document() -> None:
    from chalicelib.api.handlers import ENDPOINTS

    api = (ROOT / "docs" / "API.md").read_text()
    missing = [
        f"{e.method} {e.path}"
        for e, _ in ENDPOINTS.values()
        if e.path not in api and e.path != "/v1/openapi.json"
    ]
    assert not missing, missing


def test_one_version_everywhere(capsys) -> None:
    import tomllib

    import certs_cli
    import chalicelib
    from certs_cli.__main__ import main
    from chalicelib.api.openapi import document

    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chalicelib.__version__ == certs_cli.__version__ == package
    assert document()["info"]["version"] == package
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"certs {package}"
