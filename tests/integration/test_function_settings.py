"""Per-function platform settings through boto3 against a live server: in-range values are
kept with the function, out-of-range ones answer InvalidParameterValueException (400) on
create and on update, leaving nothing behind."""
from __future__ import annotations

from tests.conftest import deploy
from tests.integration._util import ROLE, assert_healthy, aws_error


def test_settings_are_bounded_at_the_api(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory()
    c = server.client()
    code = tiny_assets.zip(tiny_assets.adapter_a)
    err = aws_error(c, "InvalidParameterValueException", lambda: c.create_function(
        FunctionName="bad", Runtime="slfaas-lora", Role=ROLE, Code={"ZipFile": code},
        Environment={"Variables": {"SLFAAS_KEEP_ALIVE_POLICY": "forever"}}), 400)
    assert "SLFAAS_KEEP_ALIVE_POLICY" in err["Error"]["Message"]
    assert "bad" not in {f["FunctionName"] for f in c.list_functions()["Functions"]}

    good = {"SLFAAS_KEEP_ALIVE_POLICY": "histogram", "SLFAAS_KEEP_ALIVE_S": "45", "SLFAAS_TTFT_SLO_MS": "200"}
    cfg = deploy(c, "tuned", code, Environment={"Variables": good})
    assert cfg["Environment"]["Variables"] == good
    err = aws_error(c, "InvalidParameterValueException", lambda: c.update_function_configuration(
        FunctionName="tuned", Environment={"Variables": {"SLFAAS_TTFT_SLO_MS": "0"}}), 400)
    assert "SLFAAS_TTFT_SLO_MS" in err["Error"]["Message"]
    assert c.get_function_configuration(FunctionName="tuned")["Environment"]["Variables"] == good
    assert_healthy(server)
