"""Issue 3, item 1: versions, aliases, qualifiers, RevisionId checks and the boto3 waiters,
through a real boto3 client against a live ``slfaas server``; alias routing measured over
1,000 real invocations."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration._util import ROLE, aws_error, code_sha256, instances_of, pid_alive

WAIT = {"Delay": 0.2, "MaxAttempts": 300}

# Tells which version ran (and through which ARN), next to a greedy generation.
VERSION_HANDLER = '''
def handler(event, context):
    out = context.generate(event.get("prompt", "ahoy matey"), max_tokens=event.get("max_tokens", 8), temperature=0)
    return {"version": context.function_version, "arn": context.invoked_function_arn, "text": out["text"]}
'''


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


@pytest.fixture(scope="module")
def zips(tiny_assets) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {"a": tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": VERSION_HANDLER}),
            "b": tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": VERSION_HANDLER})}


def _call(client, name: str, qualifier: str | None = None, **event) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    resp = client.invoke(FunctionName=name, Payload=json.dumps(event), **kwargs)
    body = json.loads(resp["Payload"].read())
    assert "FunctionError" not in resp, body
    return resp, body


def _error(client, exc_name: str, call, status: int) -> str:  # type: ignore[no-untyped-def]
    return aws_error(client, exc_name, call, status)["Error"]["Message"]


@pytest.fixture(scope="module")
def versioned(client, zips):  # type: ignore[no-untyped-def]
    """Function ``va``: version 1 = adapter A, version 2 = adapter B, $LATEST = adapter B."""
    created = client.create_function(FunctionName="va", Runtime="slfaas-lora", Role=ROLE,
                                     Code={"ZipFile": zips["a"]}, Publish=True, Description="adapter a")
    assert created["Version"] == "1" and created["FunctionArn"].endswith(":function:va:1")
    client.get_waiter("function_active_v2").wait(FunctionName="va", WaiterConfig=WAIT)
    client.get_waiter("published_version_active").wait(FunctionName="va", Qualifier="1", WaiterConfig=WAIT)
    return created


def test_publish_snapshot_keeps_serving_its_adapter(module_server, client, zips, versioned):  # type: ignore[no-untyped-def]
    _, v1_before = _call(client, "va", "1")
    _, latest_a = _call(client, "va")
    assert v1_before["text"] == latest_a["text"] and v1_before["version"] == "1"
    assert v1_before["arn"].endswith(":function:va:1") and latest_a["arn"].endswith(":function:va")
    v1_instances = [i for i in instances_of(module_server, "va") if i["version"] == "1"]
    assert len(v1_instances) == 1

    latest = client.get_function_configuration(FunctionName="va")
    msg = _error(client, "PreconditionFailedException", lambda: client.update_function_code(
        FunctionName="va", ZipFile=zips["b"], RevisionId="00000000-0000-0000-0000-000000000000"), 412)
    assert "Revision Id" in msg
    updated = client.update_function_code(FunctionName="va", ZipFile=zips["b"], RevisionId=latest["RevisionId"])
    assert updated["Version"] == "$LATEST"
    client.get_waiter("function_updated_v2").wait(FunctionName="va", WaiterConfig=WAIT)

    r_latest, latest_b = _call(client, "va")
    r_v1, v1_after = _call(client, "va", "1")
    assert r_latest["ExecutedVersion"] == "$LATEST" and r_v1["ExecutedVersion"] == "1"
    assert latest_b["text"] != latest_a["text"], "the update did not change $LATEST's adapter"
    assert v1_after["text"] == v1_before["text"], "version 1 changed with $LATEST"
    # Version 1's instance was not retired by the update of $LATEST; it is still serving.
    still = [i for i in instances_of(module_server, "va") if i["version"] == "1"]
    assert [i["instance_id"] for i in still] == [v1_instances[0]["instance_id"]] and pid_alive(still[0]["pid"])

    cfg1 = client.get_function_configuration(FunctionName="va", Qualifier="1")
    assert (cfg1["Version"], cfg1["CodeSha256"], cfg1["Description"]) == ("1", code_sha256(zips["a"]), "adapter a")
    assert cfg1["FunctionArn"].endswith(":function:va:1")
    got = client.get_function(FunctionName="va:1")
    assert got["Configuration"]["Version"] == "1" and got["Configuration"]["RevisionId"] == cfg1["RevisionId"]
    assert client.get_function(FunctionName="va", Qualifier="$LATEST")["Configuration"]["FunctionArn"] \
        .endswith(":function:va:$LATEST")


def _latest_is_b(client, zips) -> dict:  # type: ignore[no-untyped-def]
    """$LATEST with adapter B (the first test puts it there; this makes each test stand alone)."""
    latest = client.get_function_configuration(FunctionName="va")
    if latest["CodeSha256"] != code_sha256(zips["b"]):
        client.update_function_code(FunctionName="va", ZipFile=zips["b"])
        client.get_waiter("function_updated_v2").wait(FunctionName="va", WaiterConfig=WAIT)
        latest = client.get_function_configuration(FunctionName="va")
    return latest


def _version_2(client, zips) -> None:  # type: ignore[no-untyped-def]
    _latest_is_b(client, zips)
    assert client.publish_version(FunctionName="va")["Version"] == "2"
    client.get_waiter("published_version_active").wait(FunctionName="va", Qualifier="2", WaiterConfig=WAIT)


def test_publish_version_and_list_versions(client, zips, versioned):  # type: ignore[no-untyped-def]
    latest = _latest_is_b(client, zips)
    _error(client, "PreconditionFailedException",
           lambda: client.publish_version(FunctionName="va", RevisionId="stale-revision"), 412)
    msg = _error(client, "InvalidParameterValueException",
                 lambda: client.publish_version(FunctionName="va", CodeSha256=code_sha256(b"other")), 400)
    assert "CodeSHA256" in msg
    _error(client, "ResourceNotFoundException", lambda: client.publish_version(FunctionName="no-such-fn"), 404)
    v2 = client.publish_version(FunctionName="va", CodeSha256=latest["CodeSha256"], RevisionId=latest["RevisionId"],
                                Description="adapter b")
    assert v2["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (v2["Version"], v2["Description"], v2["CodeSha256"]) == ("2", "adapter b", code_sha256(zips["b"]))
    client.get_waiter("published_version_active").wait(FunctionName="va", Qualifier="2", WaiterConfig=WAIT)
    # Nothing changed since version 2: AWS hands back version 2 instead of publishing a copy.
    assert client.publish_version(FunctionName="va")["Version"] == "2"

    listed = client.list_versions_by_function(FunctionName="va")["Versions"]
    assert [v["Version"] for v in listed] == ["$LATEST", "1", "2"]
    assert [v["FunctionArn"].rsplit(":", 1)[1] for v in listed] == ["$LATEST", "1", "2"]
    paged = [v["Version"] for p in client.get_paginator("list_versions_by_function").paginate(
        FunctionName="va", PaginationConfig={"PageSize": 1}) for v in p["Versions"]]
    assert paged == ["$LATEST", "1", "2"]
    everything = client.list_functions(FunctionVersion="ALL")["Functions"]
    assert [f["Version"] for f in everything if f["FunctionName"] == "va"] == ["$LATEST", "1", "2"]
    assert [f["Version"] for f in client.list_functions()["Functions"] if f["FunctionName"] == "va"] == ["$LATEST"]
    _error(client, "ResourceNotFoundException", lambda: client.list_versions_by_function(FunctionName="nope"), 404)
    for q in ("9", "no-such-alias"):
        _error(client, "ResourceNotFoundException",
               lambda: client.get_function_configuration(FunctionName="va", Qualifier=q), 404)
        _error(client, "ResourceNotFoundException",
               lambda: client.invoke(FunctionName="va", Qualifier=q, Payload=b"{}"), 404)


def test_aliases_crud_and_errors(client, zips, versioned):  # type: ignore[no-untyped-def]
    _version_2(client, zips)
    created = client.create_alias(FunctionName="va", Name="prod", FunctionVersion="1", Description="stable")
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["AliasArn"].endswith(":function:va:prod") and created["FunctionVersion"] == "1"
    assert created["RevisionId"] and "RoutingConfig" not in created
    _error(client, "ResourceConflictException",
           lambda: client.create_alias(FunctionName="va", Name="prod", FunctionVersion="2"), 409)
    _error(client, "ResourceNotFoundException",
           lambda: client.create_alias(FunctionName="va", Name="ghost", FunctionVersion="42"), 404)
    _error(client, "ResourceNotFoundException",
           lambda: client.create_alias(FunctionName="no-such-fn", Name="x", FunctionVersion="1"), 404)
    _error(client, "InvalidParameterValueException",
           lambda: client.create_alias(FunctionName="va", Name="12", FunctionVersion="1"), 400)
    _error(client, "InvalidParameterValueException", lambda: client.create_alias(
        FunctionName="va", Name="bad", FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}), 400)  # the primary cannot be its own extra
    _error(client, "InvalidParameterValueException", lambda: client.create_alias(
        FunctionName="va", Name="bad", FunctionVersion="$LATEST",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}}), 400)

    got = client.get_alias(FunctionName="va", Name="prod")
    assert got["RevisionId"] == created["RevisionId"] and got["Description"] == "stable"
    _error(client, "ResourceNotFoundException", lambda: client.get_alias(FunctionName="va", Name="nope"), 404)

    resp, body = _call(client, "va", "prod")
    assert resp["ExecutedVersion"] == "1" and body["version"] == "1"
    assert body["arn"].endswith(":function:va:prod")
    resp, body = _call(client, "va:prod")   # qualifier in the name
    assert resp["ExecutedVersion"] == "1"

    _error(client, "PreconditionFailedException", lambda: client.update_alias(
        FunctionName="va", Name="prod", FunctionVersion="2", RevisionId="stale"), 412)
    moved = client.update_alias(FunctionName="va", Name="prod", FunctionVersion="2", RevisionId=got["RevisionId"])
    assert moved["FunctionVersion"] == "2" and moved["RevisionId"] != got["RevisionId"]
    assert _call(client, "va", "prod")[0]["ExecutedVersion"] == "2"
    _error(client, "ResourceNotFoundException",
           lambda: client.update_alias(FunctionName="va", Name="nope", FunctionVersion="1"), 404)
    _error(client, "InvalidParameterValueException", lambda: client.update_alias(
        FunctionName="va", Name="prod", RoutingConfig={"AdditionalVersionWeights": {"1": 1.5}}), 400)

    client.create_alias(FunctionName="va", Name="beta", FunctionVersion="$LATEST")
    assert [a["Name"] for a in client.list_aliases(FunctionName="va")["Aliases"]] == ["beta", "prod"]
    assert [a["Name"] for a in client.list_aliases(FunctionName="va", FunctionVersion="2")["Aliases"]] == ["prod"]
    paged = [a["Name"] for p in client.get_paginator("list_aliases").paginate(
        FunctionName="va", PaginationConfig={"PageSize": 1}) for a in p["Aliases"]]
    assert paged == ["beta", "prod"]

    # A version an alias uses cannot be deleted; $LATEST only goes with the function.
    msg = _error(client, "ResourceConflictException", lambda: client.delete_function(FunctionName="va", Qualifier="2"),
                 409)
    assert "prod" in msg
    _error(client, "InvalidParameterValueException",
           lambda: client.delete_function(FunctionName="va", Qualifier="$LATEST"), 400)
    _error(client, "ResourceNotFoundException", lambda: client.delete_function(FunctionName="va", Qualifier="77"),
           404)

    assert client.delete_alias(FunctionName="va", Name="beta")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [a["Name"] for a in client.list_aliases(FunctionName="va")["Aliases"]] == ["prod"]
    client.update_alias(FunctionName="va", Name="prod", FunctionVersion="1")


def test_alias_weighted_routing_split(module_server, client, zips, versioned):  # type: ignore[no-untyped-def]
    """1,000 real invocations of an alias weighted 0.2 (version 2) / 0.8 (version 1)."""
    _version_2(client, zips)
    client.create_alias(FunctionName="va", Name="canary", FunctionVersion="1",
                        RoutingConfig={"AdditionalVersionWeights": {"2": 0.2}})
    got = client.get_alias(FunctionName="va", Name="canary")
    assert got["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.2}}
    _call(client, "va", "1", max_tokens=1)   # both versions warm before timing
    _call(client, "va", "2", max_tokens=1)

    n = 1000
    counts = {"1": 0, "2": 0}
    payload = json.dumps({"prompt": "hi", "max_tokens": 1})
    start = time.perf_counter()
    for _ in range(n):
        resp = client.invoke(FunctionName="va", Qualifier="canary", Payload=payload)
        body = json.loads(resp["Payload"].read())
        assert "FunctionError" not in resp, body
        assert body["version"] == resp["ExecutedVersion"], (body, resp["ExecutedVersion"])
        counts[resp["ExecutedVersion"]] += 1
    elapsed = time.perf_counter() - start
    share_v2 = counts["2"] / n
    print(f"\nalias split over {n} invocations: v1={counts['1']} v2={counts['2']} "
          f"(v2 share {share_v2:.3f}, target 0.200) in {elapsed:.1f} s ({elapsed / n * 1000:.1f} ms each)")
    assert abs(share_v2 - 0.2) <= 0.05, counts
    # Clearing the routing sends everything to the alias's version again.
    client.update_alias(FunctionName="va", Name="canary", RoutingConfig={"AdditionalVersionWeights": {}})
    assert "RoutingConfig" not in client.get_alias(FunctionName="va", Name="canary") or \
        not client.get_alias(FunctionName="va", Name="canary")["RoutingConfig"].get("AdditionalVersionWeights")
    assert {_call(client, "va", "canary", max_tokens=1)[0]["ExecutedVersion"] for _ in range(20)} == {"1"}


def test_waiters_and_version_delete(client, zips):  # type: ignore[no-untyped-def]
    client.create_function(FunctionName="waity", Runtime="slfaas-lora", Role=ROLE, Code={"ZipFile": zips["a"]})
    client.get_waiter("function_exists").wait(FunctionName="waity", WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    client.get_waiter("function_active_v2").wait(FunctionName="waity", WaiterConfig=WAIT)
    resp = client.update_function_code(FunctionName="waity", ZipFile=zips["b"], Publish=True)
    assert resp["Version"] == "1"
    client.get_waiter("function_updated_v2").wait(FunctionName="waity", WaiterConfig=WAIT)
    client.get_waiter("published_version_active").wait(FunctionName="waity", Qualifier="1", WaiterConfig=WAIT)
    assert client.get_function_configuration(FunctionName="waity", Qualifier="1")["State"] == "Active"
    assert client.get_function_configuration(FunctionName="waity")["CodeSha256"] == code_sha256(zips["b"])
    # Deleting one version leaves the function; its number is not reused.
    assert client.delete_function(FunctionName="waity", Qualifier="1")["ResponseMetadata"]["HTTPStatusCode"] == 204
    _error(client, "ResourceNotFoundException",
           lambda: client.get_function(FunctionName="waity", Qualifier="1"), 404)
    _error(client, "PreconditionFailedException", lambda: client.update_function_configuration(
        FunctionName="waity", Timeout=33, RevisionId="stale-revision"), 412)
    _error(client, "InvalidParameterValueException", lambda: client.update_function_configuration(
        FunctionName="waity:1", Timeout=33), 400)   # published versions are immutable
    client.update_function_configuration(FunctionName="waity", Timeout=33)
    client.get_waiter("function_updated_v2").wait(FunctionName="waity", WaiterConfig=WAIT)
    assert client.publish_version(FunctionName="waity")["Version"] == "2"
    client.delete_function(FunctionName="waity")
    _error(client, "ResourceNotFoundException", lambda: client.get_function(FunctionName="waity"), 404)
    with pytest.raises(Exception):  # the function_exists waiter gives up on a function that never appears
        client.get_waiter("function_exists").wait(FunctionName="waity", WaiterConfig={"Delay": 0.1, "MaxAttempts": 2})
