"""Federation settings: the registries by name, the registry each grid area's issuer uses, and
the matching boundary. Read from the environment as JSON; anything naming a registry or a grid
area that is not configured refuses to start, in one line that names the setting."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from chalicelib.settings import Settings, describe

TWO = {"dk1": {"target": "registry-dk1:5000"}, "dk2": {"target": "registry-dk2:5000"}}
AREAS = {"DK1": "dk1", "DK2": "dk2"}


def _settings(monkeypatch, **env: object) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
    return Settings()


def _error(monkeypatch, **env: object) -> str:
    with pytest.raises(ValidationError) as raised:
        _settings(monkeypatch, **env)
    line = describe(raised.value)
    assert "\n" not in line
    return line


def test_without_registries_every_grid_area_is_issued_in_the_one_registry(monkeypatch) -> None:
    settings = _settings(monkeypatch, CERTS_REGISTRY_NAME="energinet")
    assert settings.registries == {} and settings.matching_boundary == {}
    assert settings.registry_of_grid_area("DK1") == "energinet"
    assert settings.registry_of_grid_area("anywhere") == "energinet"


def test_registries_and_grid_areas_are_read_from_json(monkeypatch) -> None:
    settings = _settings(
        monkeypatch,
        CERTS_REGISTRY="grpc",
        CERTS_REGISTRY_GRPC_TARGET="unused:1",
        CERTS_REGISTRIES={**TWO, "dk2": {"target": "registry-dk2:5000", "queries": False}},
        CERTS_GRID_AREA_REGISTRIES=AREAS,
        CERTS_MATCHING_BOUNDARY={"DK": ["DK1", "DK2"]},
    )
    assert settings.registries["dk1"].target == "registry-dk1:5000"
    assert settings.registries["dk1"].tls and settings.registries["dk1"].queries
    assert not settings.registries["dk2"].queries
    assert settings.registry_of_grid_area("DK2") == "dk2"
    assert settings.registry_of_grid_area("SE3") is None  # no registry issues there
    assert settings.matching_boundary == {"DK": frozenset({"DK1", "DK2"})}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"CERTS_REGISTRIES": TWO, "CERTS_GRID_AREA_REGISTRIES": {"DK1": "dk3"}},
            ["CERTS_GRID_AREA_REGISTRIES", "DK1 -> dk3", "dk1, dk2"],
        ),
        ({"CERTS_GRID_AREA_REGISTRIES": {"DK1": "dk1"}}, ["DK1 -> dk1"]),
        ({"CERTS_REGISTRIES": TWO}, ["CERTS_GRID_AREA_REGISTRIES", "several"]),
        (
            {
                "CERTS_REGISTRIES": TWO,
                "CERTS_GRID_AREA_REGISTRIES": AREAS,
                "CERTS_MATCHING_BOUNDARY": {"DK": ["DK1", "DK3"]},
            },
            ["CERTS_MATCHING_BOUNDARY", "DK3"],
        ),
        ({"CERTS_REGISTRIES": "{dk1: nope}"}, ["CERTS_REGISTRIES", "not JSON"]),
        ({"CERTS_REGISTRIES": {" ": {}}}, ["registry name is empty"]),
        ({"CERTS_REGISTRIES": {"dk1": {"url": "x"}}}, ["url"]),
    ],
    ids=[
        "unknown-registry",
        "not-the-one-registry",
        "areas-unset",
        "boundary",
        "json",
        "empty",
        "field",
    ],
)
def test_a_registry_or_grid_area_not_configured_refuses_to_start(monkeypatch, env, names) -> None:
    line = _error(monkeypatch, **env)
    for name in names:
        assert name in line, line


def test_each_registry_needs_a_target_for_a_protocol_that_reaches_it(monkeypatch) -> None:
    line = _error(
        monkeypatch,
        CERTS_REGISTRY="grpc",
        CERTS_REGISTRY_GRPC_TARGET="unused:1",
        CERTS_REGISTRIES={"dk1": {"target": "registry-dk1:5000"}, "dk2": {}},
        CERTS_GRID_AREA_REGISTRIES=AREAS,
    )
    assert "'dk2'" in line and "host:port" in line
    # in-process simulators need none
    settings = _settings(
        monkeypatch,
        CERTS_REGISTRY="simulator",
        CERTS_REGISTRY_GRPC_TARGET="",
        CERTS_REGISTRIES={"dk1": {}, "dk2": {}},
    )
    assert set(settings.registries) == {"dk1", "dk2"}


def test_a_federation_of_simulators_is_built_with_each_registry_measured_by_name(
    monkeypatch,
) -> None:
    from chalicelib import composition
    from chalicelib.registry.federation import Registries

    settings = _settings(
        monkeypatch,
        CERTS_REGISTRY="simulator",
        CERTS_REGISTRIES={"dk1": {}, "dk2": {"queries": False}},
        CERTS_GRID_AREA_REGISTRIES=AREAS,
    )
    registries = composition.registries_for(settings)
    assert isinstance(registries, Registries)
    assert [(name, r.name, r.supports_queries) for name, r in registries] == [
        ("dk1", "dk1", True),
        ("dk2", "dk2", False),
    ]
    assert settings.default_registry == "dk1"  # CERTS_REGISTRY_NAME is not one of them
    registries.reachable()


def test_without_registries_the_one_registry_is_built_as_before(monkeypatch) -> None:
    from chalicelib import composition
    from chalicelib.registry.measured import MeasuredRegistry

    settings = _settings(monkeypatch, CERTS_REGISTRY="simulator")
    one = composition.registries_for(settings)
    assert isinstance(one, MeasuredRegistry) and one.name == settings.registry_name
