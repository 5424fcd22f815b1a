"""The public API against a model of the book, over moto: the rules that span commands.

A hypothesis state machine issues, slices and transfers through `chalice.test.Client`, with
the SQS poller feeding the worker and the registry simulator behind it (as in
tests/test_e2e_pipeline.py), and checks after every step that the book agrees with a plain
model: each owner's available slices, conservation of every certificate, a slice held by a
pending command refused to a second one, keys that replay their first answer or conflict with
another body, and owners who see and touch only what is theirs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import boto3
from chalice.test import Client
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from moto import mock_aws

import app as app_module
from chalicelib import composition
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from devstack.poller import QueuePoller
from tests.conftest import settings as service_settings
from tests.conftest import token

OWNERS = ("alice", "bob", "carol")
ISSUER = "issuer-dk"
LIVE = {"available", "reserved", "claimed", "withdrawn", "expired"}


class BookModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
            os.environ.pop(key, None)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        self._aws = mock_aws()
        self._aws.start()
        from devstack import resources

        session = boto3.Session(region_name="eu-west-1")
        resources.create(session.client("dynamodb"), session.client("sqs"), service_settings())
        services = composition.build(service_settings(), session=session)
        services.registry = RegistrySimulator(SimulatorConfig(commit_delay_s=0.0))
        app_module.use_services(services)
        sqs = session.client("sqs")
        url = sqs.get_queue_url(QueueName=services.settings.queue_name)["QueueUrl"]
        self.poller = QueuePoller(sqs, url, lambda event: app_module.worker(event, None), wait_s=0)
        self.client = Client(app_module.app)
        self.headers = {u: {"Authorization": "Bearer " + token(u)} for u in OWNERS}
        self.headers[ISSUER] = {"Authorization": "Bearer " + token(ISSUER, "issuer")}
        # the model: certificate -> issued quantity; certificate -> slice id -> (owner, Wh)
        self.issued: dict[str, int] = {}
        self.available: dict[str, dict[str, tuple[str, int]]] = {}
        self.answered: list[tuple[str, str, str, dict[str, Any], str]] = []
        self.keys = 0

    def teardown(self) -> None:
        app_module.use_services(None)
        self._aws.stop()

    # --- HTTP ---------------------------------------------------------------------------------

    def post(self, who: str, path: str, body: dict[str, Any], key: str | None = None):
        if key is None:
            self.keys += 1
            key = f"key-{self.keys}"
        answer = self.client.http.post(
            path,
            body=json.dumps(body),
            headers={
                **self.headers[who],
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            },
        )
        return answer.status_code, json.loads(answer.body), key

    def get(self, who: str, path: str) -> tuple[int, Any]:
        answer = self.client.http.get(path, headers=self.headers[who])
        return answer.status_code, json.loads(answer.body)

    def accepted(self, who: str, path: str, body: dict[str, Any]) -> str:
        status, answer, key = self.post(who, path, body)
        assert status == 202, answer
        self.answered.append((who, path, key, body, answer["command_id"]))
        return answer["command_id"]

    def settle(self, command_id: str, who: str) -> None:
        self.poller.drain()
        status, command = self.get(who, f"/v1/commands/{command_id}")
        assert status == 200 and command["status"] == "COMMITTED", command

    def learn(self, certificate_id: str, *owners: str) -> None:
        """Read the owners' available slices of a certificate into the model."""
        slices = self.available[certificate_id]
        for owner in owners:
            status, view = self.get(owner, f"/v1/certificates/{certificate_id}")
            assert status == 200, view
            for s in view["slices"]:
                if s["state"] == "available":
                    slices.setdefault(s["slice_id"], (owner, s["quantity_wh"]))

    def slices(self) -> list[tuple[str, str, str, int]]:
        return [
            (cert, slice_id, owner, wh)
            for cert, found in sorted(self.available.items())
            for slice_id, (owner, wh) in sorted(found.items())
        ]

    # --- rules --------------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), quantity=st.integers(1, 10_000))
    def issue(self, owner: str, quantity: int) -> None:
        n = len(self.issued) + 1
        command_id = self.accepted(
            ISSUER,
            "/v1/certificates",
            {
                "type": "production",
                "gsrn": f"5713130000000{n:05d}",
                "grid_area": "DK1",
                "start": "2026-06-01T10:00:00Z",
                "end": "2026-06-01T11:00:00Z",
                "quantity_wh": quantity,
                "owner": owner,
            },
        )
        self.settle(command_id, ISSUER)
        _, command = self.get(ISSUER, f"/v1/commands/{command_id}")
        certificate_id = command["certificate_id"]
        self.issued[certificate_id] = quantity
        self.available[certificate_id] = {}
        self.learn(certificate_id, owner)

    @precondition(lambda self: any(wh >= 2 for *_, wh in self.slices()))
    @rule(data=st.data())
    def slice(self, data: st.DataObject) -> None:
        cert, slice_id, owner, wh = data.draw(
            st.sampled_from([s for s in self.slices() if s[3] >= 2])
        )
        cut = data.draw(st.integers(1, wh - 1))
        command_id = self.accepted(
            owner,
            f"/v1/certificates/{cert}/slices",
            {"slice_id": slice_id, "quantities_wh": [cut, wh - cut]},
        )
        self.settle(command_id, owner)
        del self.available[cert][slice_id]
        self.learn(cert, owner)

    @precondition(lambda self: bool(self.slices()))
    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        cert, slice_id, owner, wh = data.draw(st.sampled_from(self.slices()))
        receiver = data.draw(st.sampled_from([o for o in OWNERS if o != owner]))
        amount = data.draw(st.integers(1, wh))
        body = {"certificate_id": cert, "slice_id": slice_id, "receiver": receiver}
        command_id = self.accepted(owner, "/v1/transfers", {**body, "quantity_wh": amount})
        # Held by the pending transfer: any other command on the slice is refused at once.
        status, answer, _ = self.post(
            owner,
            f"/v1/certificates/{cert}/slices",
            {"slice_id": slice_id, "quantities_wh": [1, wh - 1] if wh > 1 else [wh, 1]},
        )
        assert status in (409, 422) and (status == 409 or wh == 1), answer
        self.settle(command_id, owner)
        del self.available[cert][slice_id]
        self.learn(cert, owner, receiver)

    @precondition(lambda self: bool(self.answered))
    @rule(data=st.data())
    def reuse_a_key(self, data: st.DataObject) -> None:
        who, path, key, body, command_id = data.draw(st.sampled_from(self.answered))
        status, answer, _ = self.post(who, path, body, key)
        assert status == 202 and answer["command_id"] == command_id, answer
        other = {**body, "reused": True}
        status, answer, _ = self.post(who, path, other, key)
        assert status in (400, 409), answer  # never a second command under one key
        self.poller.drain()

    @precondition(lambda self: bool(self.slices()))
    @rule(data=st.data())
    def reach_for_a_foreign_slice(self, data: st.DataObject) -> None:
        cert, slice_id, owner, wh = data.draw(st.sampled_from(self.slices()))
        holders = {o for o, _ in self.available[cert].values()}
        strangers = [o for o in OWNERS if o != owner]
        stranger = data.draw(st.sampled_from(strangers))
        status, answer, _ = self.post(
            stranger,
            "/v1/transfers",
            {"certificate_id": cert, "slice_id": slice_id, "receiver": owner, "quantity_wh": wh},
        )
        assert status == 404, answer
        status, view = self.get(stranger, f"/v1/certificates/{cert}")
        if stranger in holders:
            assert status == 200 and all(s["owner"] == stranger for s in view["slices"])
        else:
            assert status in (200, 404)  # 200 only if they held a slice of it before
            if status == 200:
                assert all(s["owner"] == stranger for s in view["slices"])

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def every_certificate_conserves_its_quantity(self) -> None:
        for cert, quantity in self.issued.items():
            status, view = self.get(ISSUER, f"/v1/certificates/{cert}")
            assert status == 200
            live = sum(s["quantity_wh"] for s in view["slices"] if s["state"] in LIVE)
            assert live == quantity, view

    @invariant()
    def each_owner_has_what_the_model_says(self) -> None:
        for owner in OWNERS:
            status, page = self.get(owner, "/v1/certificates?limit=100")
            assert status == 200
            seen = Counter(
                (c["certificate_id"], s["slice_id"], s["quantity_wh"])
                for c in page["items"]
                for s in c["slices"]
                if s["state"] == "available"
            )
            assert all(s["owner"] == owner for c in page["items"] for s in c["slices"])
            expected = Counter(
                (cert, slice_id, wh) for cert, slice_id, o, wh in self.slices() if o == owner
            )
            assert seen == expected, (owner, seen, expected)


TestBookModel = BookModel.TestCase
TestBookModel.settings = settings(
    max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "6")),
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
