"""The embedded stack's moto servers (devstack/motoserver.py) answer what moto answers.

Two levels: the serializer shortcut gives the generic serializer's bytes for any item
(hypothesis), and a server started as the stack starts it gives the answers in-process moto
gives to the same DynamoDB and SQS calls, binary values, FIFO groups and the dead-letter
redrive included.
"""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config
import botocore.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.core import serialize
from moto.core.utils import get_service_model

from devstack import motoserver
from devstack.stack import HOST, free_port

# --- the serializer shortcut -----------------------------------------------------------------

_scalars = st.one_of(
    st.builds(lambda s: {"S": s}, st.text()),
    st.builds(lambda n: {"N": str(n)}, st.integers() | st.decimals(allow_nan=False)),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda s: {"SS": s}, st.lists(st.text(), min_size=1, unique=True)),
    st.builds(lambda s: {"NS": [str(n) for n in s]}, st.lists(st.integers(), min_size=1)),
    st.builds(lambda b: {"B": b}, st.binary()),
    st.builds(lambda s: {"BS": s}, st.lists(st.binary(), min_size=1, unique=True)),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.builds(lambda items: {"L": items}, st.lists(inner, max_size=4))
        | st.builds(lambda m: {"M": m}, st.dictionaries(st.text(min_size=1), inner, max_size=4))
    ),
    max_leaves=25,
)
_items = st.dictionaries(st.text(min_size=1), _values, max_size=6)


def _answer(operation: str, result: dict) -> str:
    model = get_service_model("dynamodb").operation_model(operation)
    serializer = serialize.JSONSerializer(
        operation_model=model,
        pretty_print=False,
        value_picker=serialize.XFormedAttributePicker(),
    )
    return serializer.serialize(result)["body"]


@contextlib.contextmanager
def _shortcut():
    """The shortcut installed for a while, moto's own serializer restored after it (other
    tests in this process use in-process moto as it is)."""
    cls = serialize.BaseJSONSerializer
    generic = cls.__dict__["_serialize_type_structure"]
    motoserver._install_fast_attribute_values()
    try:
        yield
    finally:
        cls._serialize_type_structure = generic
        del cls._certs_fast_attribute_values


@settings(max_examples=300, deadline=None)
@given(item=_items, items=st.lists(_items, max_size=3))
def test_the_shortcut_writes_the_bytes_the_generic_serializer_writes(item, items):
    results = {
        "GetItem": {"Item": item},
        "UpdateItem": {"Attributes": item},
        "Query": {"Items": items, "Count": len(items), "ScannedCount": len(items)},
    }
    generic = {op: _answer(op, result) for op, result in results.items()}
    with _shortcut():
        assert {op: _answer(op, result) for op, result in results.items()} == generic


def test_binary_values_still_take_the_generic_path():
    item = {"b": {"B": b"\x00\xff"}, "m": {"M": {"s": {"S": "x"}, "b": {"B": b"\x01"}}}}
    before = _answer("GetItem", {"Item": item})
    with _shortcut():
        after = _answer("GetItem", {"Item": item})
    assert after == before
    assert json.loads(after)["Item"]["b"] == {"B": "AP8="}  # encoded, as DynamoDB sends it


# --- queries without sorting the whole table -------------------------------------------------


@contextlib.contextmanager
def _fast_query():
    """The query shortcut installed for a while, moto's own restored after it."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    patched = {
        Table: ("query", "all_items", "put_item", "delete_item"),
        DynamoDBBackend: ("update_item", "transact_write_items"),
    }
    generic = {(cls, name): cls.__dict__[name] for cls, names in patched.items() for name in names}
    motoserver._install_fast_query()
    try:
        yield
    finally:
        for (cls, name), method in generic.items():
            setattr(cls, name, method)
        del Table._certs_fast_query, Table._certs_generic_query


_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),  # pk
        st.text("xyz", min_size=1, max_size=3),  # sk
        st.sampled_from(["g1", "g2", None]),  # the index's key, absent from some items
        st.integers(0, 9),  # the index's sort key
    ),
    max_size=25,
    unique_by=lambda row: row[:2],
)


def _table_with_an_index():
    """Table "t" (pk, sk) with the index by_g (g, n); a client on it."""
    db = boto3.client("dynamodb", region_name="eu-west-1")
    db.create_table(
        TableName="t",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": n, "AttributeType": t}
            for n, t in (("pk", "S"), ("sk", "S"), ("g", "S"), ("n", "N"))
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_g",
                "KeySchema": [
                    {"AttributeName": "g", "KeyType": "HASH"},
                    {"AttributeName": "n", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return db


def _all_pages(db, **query) -> list:
    pages, start = [], None
    while True:
        answer = db.query(TableName="t", **query, **({"ExclusiveStartKey": start} if start else {}))
        pages.append(answer["Items"])
        start = answer.get("LastEvaluatedKey")
        if not start:
            return pages


@settings(max_examples=40, deadline=None)
@given(rows=_rows, limit=st.integers(1, 5), forward=st.booleans())
def test_queries_answer_the_same_pages_without_sorting_the_whole_table(rows, limit, forward):
    with mock_aws():
        db = _table_with_an_index()
        for pk, sk, g, n in rows:
            item = {"pk": {"S": pk}, "sk": {"S": sk}, "n": {"N": str(n)}}
            db.put_item(TableName="t", Item=item | ({"g": {"S": g}} if g else {}))
        queries = [
            {
                "KeyConditionExpression": "pk = :p",
                "ExpressionAttributeValues": {":p": {"S": "a"}},
            },
            {
                "KeyConditionExpression": "pk = :p AND sk <= :s",
                "ExpressionAttributeValues": {":p": {"S": "b"}, ":s": {"S": "y"}},
            },
            {
                "IndexName": "by_g",
                "KeyConditionExpression": "g = :g AND n > :n",
                "ExpressionAttributeValues": {":g": {"S": "g1"}, ":n": {"N": "2"}},
            },
        ]
        common = {"Limit": limit, "ScanIndexForward": forward}
        generic = [_all_pages(db, **q, **common) for q in queries]
        with _fast_query():
            fast = [_all_pages(db, **q, **common) for q in queries]
            scanned = db.scan(TableName="t")["Items"]  # a Scan keeps moto's order
        assert fast == generic
        assert scanned == db.scan(TableName="t")["Items"]


_writes = st.lists(
    st.tuples(
        st.sampled_from(["put", "set", "remove", "delete", "refused", "transaction", "query"]),
        st.sampled_from(["a", "b"]),  # pk
        st.sampled_from(["x", "y", "z"]),  # sk
        st.sampled_from(["g1", "g2", None]),  # the index's key
        st.integers(0, 9),  # the index's sort key
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(writes=_writes)
def test_a_query_finds_what_the_table_holds_after_any_writes(writes):
    """The partitions a Query looks at follow every put, update (in place, or creating the
    item, or refused by its condition), delete and transaction: after each write, each Query
    answers exactly the items a Scan says match."""
    with mock_aws(), _fast_query():
        db = _table_with_an_index()

        def keys(items) -> set:
            return {(i["pk"]["S"], i["sk"]["S"]) for i in items}

        def check() -> None:
            table = db.scan(TableName="t")["Items"]
            for g in ("g1", "g2"):
                found = [
                    item
                    for page in _all_pages(
                        db,
                        IndexName="by_g",
                        KeyConditionExpression="g = :g AND n >= :n",
                        ExpressionAttributeValues={":g": {"S": g}, ":n": {"N": "0"}},
                        Limit=2,
                    )
                    for item in page
                ]
                # an item without the index's sort key is not in the index
                assert keys(found) == keys(i for i in table if i.get("g") == {"S": g} and "n" in i)
            for pk in ("a", "b"):
                found = [
                    item
                    for page in _all_pages(
                        db,
                        KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": pk}},
                    )
                    for item in page
                ]
                assert keys(found) == keys(i for i in table if i["pk"] == {"S": pk})

        for op, pk, sk, g, n in writes:
            key = {"pk": {"S": pk}, "sk": {"S": sk}}
            if op == "put":
                item = key | {"n": {"N": str(n)}} | ({"g": {"S": g}} if g else {})
                db.put_item(TableName="t", Item=item)
            elif op == "set":  # in place, or a new item
                db.update_item(
                    TableName="t",
                    Key=key,
                    UpdateExpression="SET g = :g, n = :n",
                    ExpressionAttributeValues={":g": {"S": g or "g1"}, ":n": {"N": str(n)}},
                )
            elif op == "remove":  # leaves the index
                db.update_item(TableName="t", Key=key, UpdateExpression="REMOVE g")
            elif op == "delete":
                db.delete_item(TableName="t", Key=key)
            elif op == "refused":
                with contextlib.suppress(db.exceptions.ConditionalCheckFailedException):
                    db.update_item(
                        TableName="t",
                        Key=key,
                        UpdateExpression="SET g = :g",
                        ConditionExpression="attribute_exists(nothing)",
                        ExpressionAttributeValues={":g": {"S": "g2"}},
                    )
            elif op == "transaction":
                with contextlib.suppress(db.exceptions.TransactionCanceledException):
                    db.transact_write_items(
                        TransactItems=[
                            {
                                "Update": {
                                    "TableName": "t",
                                    "Key": key,
                                    "UpdateExpression": "SET g = :g",
                                    "ExpressionAttributeValues": {":g": {"S": g or "g2"}},
                                    **(
                                        {"ConditionExpression": "attribute_exists(pk)"}
                                        if n % 2
                                        else {}
                                    ),
                                }
                            }
                        ]
                    )
            else:
                check()
        check()


# --- the server as the stack starts it, against in-process moto ------------------------------


# --- lookups remembered -----------------------------------------------------------------------


@contextlib.contextmanager
def _lookup_caches():
    """The caches installed for a while, moto's own lookups restored after them."""
    from moto.core import responses
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.sqs import models as sqs_models

    generic = (
        responses.method_names_from_class,
        sqs_models.camelcase_to_underscores,
        UpdateExpressionParser.__dict__["make"],
    )
    motoserver._install_lookup_caches()
    try:
        yield
    finally:
        (
            responses.method_names_from_class,
            sqs_models.camelcase_to_underscores,
            UpdateExpressionParser.make,
        ) = generic
        del responses._certs_lookup_caches


def _updates(db) -> list:
    """One UpdateExpression applied to items of different shapes, names and values: a parse
    tree shared between the calls must not carry one call's names or values into the next."""
    db.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    expression = "SET #a = :v, #m.#k = if_not_exists(#m.#k, :w) ADD #c :one REMOVE #gone"
    answers = []
    for n, (a, k, gone) in enumerate([("x", "k1", "g"), ("y", "k2", "h"), ("x", "k1", "g")]):
        db.put_item(
            TableName="t",
            Item={"pk": {"S": f"p{n % 2}"}, "m": {"M": {}}, "g": {"S": "1"}, "h": {"S": "2"}},
        )
        answers.append(
            db.update_item(
                TableName="t",
                Key={"pk": {"S": f"p{n % 2}"}},
                UpdateExpression=expression,
                ExpressionAttributeNames={
                    "#a": a,
                    "#m": "m",
                    "#k": k,
                    "#c": "count",
                    "#gone": gone,
                },
                ExpressionAttributeValues={
                    ":v": {"S": f"v{n}"},
                    ":w": {"N": str(n)},
                    ":one": {"N": "1"},
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
        )
    return answers


def test_remembered_parse_trees_give_every_update_its_own_names_and_values():
    with mock_aws():
        expected = _updates(boto3.client("dynamodb", region_name="eu-west-1"))
    with _lookup_caches(), mock_aws():
        remembered = _updates(boto3.client("dynamodb", region_name="eu-west-1"))
    assert remembered == expected
    assert remembered[1]["y"] == {"S": "v1"} and "h" not in remembered[1]
    assert remembered[2]["x"] == {"S": "v2"} and remembered[2]["m"]["M"]["k1"] == {"N": "2"}


@pytest.fixture(scope="module")
def server_url():
    process, url = motoserver.start(HOST, free_port())
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


_VOLATILE = {
    "ResponseMetadata",
    "MessageId",
    "ReceiptHandle",
    "SequenceNumber",
    "MD5OfMessageBody",
    "SentTimestamp",
    "ApproximateFirstReceiveTimestamp",
    "QueueUrl",
    "QueueArn",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "TableArn",
    "CreationDateTime",
    "IndexArn",
    "LatestStreamArn",
}


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _script(session: boto3.Session) -> list:
    """DynamoDB and SQS calls of the kinds the service makes, their answers in order."""
    db, sqs = session.client("dynamodb"), session.client("sqs")
    seen: list = []
    db.create_table(
        TableName="t",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    item = {
        "pk": {"S": "CERT#1"},
        "sk": {"S": "CERT"},
        "version": {"N": "1"},
        "blob": {"B": b"\x00\x01\xfe"},
        "tags": {"SS": ["a", "b"]},
        "slices": {"M": {"s1": {"M": {"owner": {"S": "alice"}, "quantity_wh": {"N": "7"}}}}},
        "applied": {"L": [{"S": "c1"}, {"NULL": True}, {"BOOL": False}]},
    }
    key = {"pk": item["pk"], "sk": item["sk"]}
    new = "attribute_not_exists(pk)"
    seen.append(db.put_item(TableName="t", Item=item, ConditionExpression=new))
    seen.append(db.get_item(TableName="t", Key=key, ConsistentRead=True))
    seen.append(
        db.update_item(
            TableName="t",
            Key=key,
            UpdateExpression="SET slices.#s.#o = :bob, version = version + :one",
            ConditionExpression="slices.#s.#o = :alice",
            ExpressionAttributeNames={"#s": "s1", "#o": "owner"},
            ExpressionAttributeValues={
                ":bob": {"S": "bob"},
                ":alice": {"S": "alice"},
                ":one": {"N": "1"},
            },
            ReturnValues="ALL_NEW",
        )
    )
    try:
        db.put_item(
            TableName="t",
            Item=item,
            ConditionExpression=new,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except db.exceptions.ConditionalCheckFailedException as exc:
        seen.append(exc.response["Error"]["Code"])
        seen.append(exc.response.get("Item"))
    seen.append(
        db.query(
            TableName="t",
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "CERT#1"}},
        )
    )
    seen.append(db.batch_get_item(RequestItems={"t": {"Keys": [key]}}))

    dead = sqs.create_queue(QueueName="d.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue = sqs.create_queue(
        QueueName="q.fifo",
        Attributes={
            "FifoQueue": "true",
            "VisibilityTimeout": "0",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 2}),
        },
    )["QueueUrl"]
    for i, group in enumerate(["g1", "g1", "g2"]):
        seen.append(
            sqs.send_message(
                QueueUrl=queue,
                MessageBody=f"m{i}",
                MessageGroupId=group,
                MessageDeduplicationId=f"d{i}",
            )
        )
    seen.append(  # a duplicate: dropped
        sqs.send_message(
            QueueUrl=queue, MessageBody="m0", MessageGroupId="g1", MessageDeduplicationId="d0"
        )
    )
    seen.append(sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"]))
    for _ in range(4):  # visibility 0: each receive sees them again, until the redrive
        answer = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        seen.append(sorted(m["Body"] for m in answer.get("Messages", [])))
        seen.append(
            sorted(m["Attributes"]["ApproximateReceiveCount"] for m in answer.get("Messages", []))
        )
    seen.append(sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["All"]))
    answer = sqs.receive_message(QueueUrl=dead, MaxNumberOfMessages=10)
    seen.append(sorted(m["Body"] for m in answer.get("Messages", [])))
    seen.append(
        sqs.delete_message_batch(
            QueueUrl=dead,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(answer.get("Messages", []))
            ],
        )
    )
    return [_stable(answer) for answer in seen]


def test_the_server_answers_what_moto_answers(server_url, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)
    credentials = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    with mock_aws():
        expected = _script(boto3.Session(region_name="eu-west-1", **credentials))
    monkeypatch.setenv("AWS_ENDPOINT_URL", server_url)
    served = _script(boto3.Session(region_name="eu-west-1", **credentials))
    assert served == expected
    # and the script did reach what it is there for: binary kept, a nested update, a refused
    # put answering the old item, a FIFO duplicate dropped, the redrive to the dead letters
    assert served[1]["Item"]["blob"] == {"B": b"\x00\x01\xfe"}
    assert served[2]["Attributes"]["slices"]["M"]["s1"]["M"]["owner"] == {"S": "bob"}
    assert served[3] == "ConditionalCheckFailedException" and served[4]["version"] == {"N": "2"}
    assert served[11]["Attributes"]["ApproximateNumberOfMessages"] == "3"
    assert served[-2] == ["m1", "m2"]


def test_the_server_stops_cleanly_on_sigterm():
    process, _ = motoserver.start(HOST, free_port())
    process.terminate()
    assert process.wait(timeout=10) == 0


# --- atomicity: what DynamoDB and SQS FIFO guarantee per request ------------------------------

RACERS = 10


def _race(calls) -> list:
    """Run the calls at once (a barrier starts them together); their results or errors."""
    start = threading.Barrier(len(calls))

    def run(call):
        start.wait()
        try:
            return call()
        except botocore.exceptions.ClientError as refused:
            return refused.response["Error"]["Code"]

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _racers(session: boto3.Session, service: str) -> list:
    config = botocore.config.Config(max_pool_connections=RACERS)
    return [session.client(service, config=config) for _ in range(RACERS)]


def test_of_ten_conditional_writes_racing_for_one_item_exactly_one_wins(server_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", server_url)
    session = boto3.Session(
        region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    session.client("dynamodb").create_table(
        TableName="race",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    clients = _racers(session, "dynamodb")
    # A few hundred attributes make moto's read-check-write slow enough for threads to meet.
    padding = {f"a{i}": {"S": "x" * 50} for i in range(300)}
    for round_ in range(10):
        key = {"pk": {"S": f"slice-{round_}"}}
        clients[0].put_item(TableName="race", Item={**key, "version": {"N": "0"}, **padding})

        def reserve(client, i, key=key):
            return lambda: client.update_item(
                TableName="race",
                Key=key,
                UpdateExpression="SET version = :next, holder = :me",
                ConditionExpression="version = :seen",
                ExpressionAttributeValues={
                    ":seen": {"N": "0"},
                    ":next": {"N": "1"},
                    ":me": {"S": str(i)},
                },
            )

        results = _race([reserve(c, i) for i, c in enumerate(clients)])
        won = [r for r in results if isinstance(r, dict)]
        assert len(won) == 1, f"round {round_}: {len(won)} conditional writes passed one condition"
        assert results.count("ConditionalCheckFailedException") == RACERS - 1
