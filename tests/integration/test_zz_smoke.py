import json
from tests.conftest import deploy
def test_smoke(tiny_assets, module_server):
    c = module_server.client()
    cfg = deploy(c, "f1", tiny_assets.zip(tiny_assets.adapter_a))
    assert cfg["State"] == "Active"
    r = c.invoke(FunctionName="f1", Payload=json.dumps({"prompt": "hello", "max_tokens": 5, "temperature": 0}))
    body = json.loads(r["Payload"].read())
    print(body)
    assert "FunctionError" not in r
    try:
        c.get_function(FunctionName="nope")
    except c.exceptions.ResourceNotFoundException as e:
        print("OK", e)
