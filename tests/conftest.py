"""Shared fixtures: services over in-memory fakes, and over moto built from infra/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from chalicelib import composition
from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
from chalicelib.api.auth import SharedSecretVerifier, mint_token
from chalicelib.settings import Settings
from devstack import motoserver

# Tests run moto in-process from several threads (the CLI's local server and its queue feeder,
# the concurrency tests): each request must be as atomic as on AWS, or a race test proves nothing.
motoserver.make_atomic()

SECRET = "test-secret-that-is-long-enough-for-hs256"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def token(owner: str, *roles: str) -> str:
    return mint_token(SECRET, owner, roles)


def settings(**overrides) -> Settings:
    return Settings(jwt_secret=SECRET, **overrides)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory_services(clock: Clock) -> composition.Services:
    return composition.Services(
        settings=settings(),
        book=InMemoryBook(),
        queue=InMemoryQueue(),
        verifier=SharedSecretVerifier(SECRET),
        clock=clock,
    )


@pytest.fixture
def aws() -> Iterator[boto3.Session]:
    """moto for DynamoDB and SQS, with the table and queues of infra/resources.json."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(key, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        session = boto3.Session(region_name="eu-west-1")
        from devstack import resources

        resources.create(session.client("dynamodb"), session.client("sqs"), settings())
        yield session


@pytest.fixture
def moto_services(aws: boto3.Session, clock: Clock) -> composition.Services:
    built = composition.build(settings(), session=aws)
    built.clock = clock
    return built


@pytest.fixture(params=["one after another", "side by side"])
def groups_both_ways(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test of the worker (tests.pipeline.Pipeline) both ways: a batch's FIFO groups one
    after another, and side by side in threads, as the composition runs them on Lambda."""
    if request.param == "side by side":
        from tests.pipeline import Pipeline

        monkeypatch.setattr(Pipeline, "side_by_side", staticmethod(composition.side_by_side(10)))
