"""``/metrics`` of a live server (``--auth sigv4`` with a scrape token) after real boto3
invocations: it parses as Prometheus text, its per-function values match the invocations made
and what billing recorded, and anonymous or wrongly-authorised scrapes are refused."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.conftest import LiveServer, deploy
from tests.integration._util import invoke, raw_http

pytestmark = pytest.mark.slow

TOKEN = "scrape-token-0123456789abcdef"
EVENT = {"prompt": "hoist the sails", "max_tokens": 4, "temperature": 0}


def _families(text: str) -> dict[str, dict[tuple, float]]:
    """name → {sorted label items → value}, every sample of the exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _value(fams: dict, name: str, **labels: str) -> float:
    return fams.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_metrics_match_the_invocations_and_need_authorisation(tiny_assets, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")          # what the test's signed API calls use
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    creds = tmp_path / "credentials"
    creds.write_text("[t]\naws_access_key_id = test\naws_secret_access_key = test\n")
    monkeypatch.setenv("SLFAAS_METRICS_TOKEN", TOKEN)       # the server inherits it (never on its command line)
    server = LiveServer(tmp_path / "data", "--auth", "sigv4", "--credentials", str(creds),
                        "--keep-alive-s", "600").start()
    try:
        _check(server, tiny_assets)
    finally:
        server.stop()


def _check(server: LiveServer, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    c = server.client()
    deploy(c, "m-one", tiny_assets.zip(tiny_assets.adapter_a), MemorySize=2048)
    deploy(c, "m-batch", tiny_assets.zip(tiny_assets.adapter_b), MemorySize=2048,
           Environment={"Variables": {"SLFAAS_MAX_BATCH_SIZE": "2"}})
    for _ in range(3):
        assert "FunctionError" not in invoke(c, "m-one", EVENT)[0]
    assert "FunctionError" not in invoke(c, "m-batch", EVENT)[0]
    events = list(c.invoke_with_response_stream(FunctionName="m-batch", Payload=json.dumps(EVENT))["EventStream"])
    assert events[-1] == {"InvokeComplete": {}}
    c.put_function_concurrency(FunctionName="m-one", ReservedConcurrentExecutions=0)
    with pytest.raises(c.exceptions.TooManyRequestsException):
        invoke(c, "m-one", EVENT)
    c.delete_function_concurrency(FunctionName="m-one")

    # refused without authorisation, in the API's error shape
    status, headers, body = raw_http(server.url, "GET", "/metrics", headers={})
    assert status == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert b"slfaas_" not in body
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"):
        assert raw_http(server.url, "GET", "/metrics", headers={"Authorization": wrong})[0] == 403
    # the scrape token, or a signed request
    status, headers, text = raw_http(server.url, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and headers["content-type"].startswith("text/plain")
    from slfaas.client import signed_headers
    signed = raw_http(server.url, "GET", "/metrics", headers=signed_headers("GET", server.url + "/metrics", None, {}))
    assert signed[0] == 200

    fams = _families(text.decode())
    usage = server.api("GET", "/slfaas/v1/cost/usage")["Usage"]
    for fn, n in (("m-one", 3), ("m-batch", 2)):
        assert _value(fams, "slfaas_invocations_total", function=fn, status="success") == n
        assert _value(fams, "slfaas_invocations_total", function=fn, status="error") == 0
        for hist in ("slfaas_batch_size", "slfaas_e2e_seconds", "slfaas_ttft_seconds"):
            assert _value(fams, f"{hist}_count", function=fn) == n, hist
        assert _value(fams, "slfaas_cold_starts_total", function=fn, source="fresh") == 1
        assert _value(fams, "slfaas_instances", function=fn, state="IDLE") == 1
        records = [u for u in usage if u["function_name"] == fn]
        assert len(records) == n
        assert _value(fams, "slfaas_batch_size_sum", function=fn) == sum(u["batch_size"] for u in records)
        assert _value(fams, "slfaas_device_seconds_total", function=fn, kind="compute") == \
            pytest.approx(sum(u["compute_device_s"] for u in records), rel=1e-9)
        assert _value(fams, "slfaas_device_seconds_total", function=fn, kind="init") == \
            pytest.approx(sum(u["init_device_s"] for u in records), rel=1e-9)
        assert _value(fams, "slfaas_cost_usd_total", function=fn) == \
            pytest.approx(float(sum(Decimal(u["cost_usd"]) for u in records)), rel=1e-9)
        # TTFT is within the end-to-end time, both within the records' span
        assert 0 < _value(fams, "slfaas_ttft_seconds_sum", function=fn) < _value(fams, "slfaas_e2e_seconds_sum",
                                                                                  function=fn)
        assert _value(fams, "slfaas_adapter_bytes", function=fn) > 0
    assert _value(fams, "slfaas_throttles_total", function="m-one",
                  reason="ReservedFunctionConcurrentInvocationLimitExceeded") == 1
    assert not any(v for v in fams.get("slfaas_queue_length", {}).values())
    assert _value(fams, "slfaas_memory_bytes", device="cpu", kind="backbone") > 0
