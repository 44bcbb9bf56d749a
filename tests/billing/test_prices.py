from decimal import Decimal
from pathlib import Path

import pytest

from slfaas.billing.prices import (COST_QUANTUM, PriceFileError, PriceSheet, UnknownDeviceType,
                                   default_prices, device_second_usd, device_type_for,
                                   invocation_cost_usd, load_prices)
from slfaas.errors import InvalidParameter

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_published_prices_with_sources():
    s = default_prices()
    assert s.request_usd == Decimal("0.20") / 1_000_000
    assert s.gpu_second_usd["H100"] == Decimal("0.001097")
    assert s.gpu_second_usd["A100-80GB"] == Decimal("0.000694")
    assert s.gpu_second_usd["A100"] == Decimal("0.000583")
    assert s.gpu_second_usd["H200"] == Decimal("0.001261")
    # Fargate hourly prices, per second.
    assert abs(s.cpu_vcpu_second_usd * 3600 - Decimal("0.04048")) < Decimal("1e-12")
    assert abs(s.cpu_gib_second_usd * 3600 - Decimal("0.004445")) < Decimal("1e-12")
    assert s.mb_per_vcpu == 1769
    for key in ("request_usd", "cpu.vcpu_second_usd", "cpu.gib_second_usd",
                *(f"gpu_second_usd.{k}" for k in s.gpu_second_usd)):
        assert "https://" in s.sources[key], key
    assert all(isinstance(v, Decimal) for v in s.gpu_second_usd.values())


def test_sheet_is_read_only_and_rejects_bad_prices():
    s = default_prices()
    with pytest.raises(TypeError):
        s.gpu_second_usd["H100"] = Decimal(0)  # type: ignore[index]
    with pytest.raises(InvalidParameter):
        PriceSheet(Decimal("-1"), {}, Decimal(0), Decimal(0))
    with pytest.raises(InvalidParameter):
        PriceSheet(Decimal(0), {"H100": 0.001}, Decimal(0), Decimal(0))  # float, not Decimal


@pytest.mark.parametrize("device,name,expected", [
    ("cpu", None, "cpu"),
    ("cpu", "whatever", "cpu"),
    ("cuda:0", "NVIDIA H100 80GB HBM3", "H100"),
    ("cuda:1", "NVIDIA H100 PCIe", "H100"),
    ("cuda:0", "NVIDIA H200", "H200"),
    ("cuda", "NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("cuda:0", "NVIDIA A100 80GB PCIe", "A100-80GB"),
    ("cuda:0", "NVIDIA A100-SXM4-40GB", "A100"),
    ("cuda:0", "NVIDIA A100-PCIE-40GB", "A100"),
    ("cuda:0", "NVIDIA L4", "L4"),
    ("cuda:0", "NVIDIA A10G", "A10G"),
    ("cuda:0", "NVIDIA L40S", "L40S"),          # not L4
    ("cuda:0", "NVIDIA A10", "A10"),            # not A10G
    ("cuda:0", "Tesla T4", "T4"),
    ("cuda:0", "NVIDIA GeForce RTX 4090", "RTX4090"),
    ("cuda:0", None, "GPU"),
])
def test_device_type_for(device, name, expected):
    assert device_type_for(device, name) == expected


def test_device_rate_gpu_cpu_and_unknown():
    s = default_prices()
    assert device_second_usd(s, "H100", 10240) == Decimal("0.001097")  # a GPU is billed whole
    # One vCPU's worth of memory: 1 vCPU + 1769/1024 GiB.
    rate = device_second_usd(s, "cpu", 1769)
    assert rate == s.cpu_vcpu_second_usd + Decimal(1769) / 1024 * s.cpu_gib_second_usd
    assert device_second_usd(s, "cpu", 3538) == 2 * rate
    with pytest.raises(UnknownDeviceType, match=r"'L40S'.*gpu_second_usd") as info:
        device_second_usd(s, "L40S", 1024)
    assert isinstance(info.value, InvalidParameter)
    assert "\n" not in str(info.value)


def test_invocation_cost_exact_and_quantized():
    s = default_prices()
    # 0.5 s on an H100 + one request fee, exactly.
    assert invocation_cost_usd(s, "H100", 0, 0.5) == Decimal("0.0005487")
    assert invocation_cost_usd(s, "H100", 0, 0.0, requests=0) == 0
    # 0.1 is not a binary float; repr keeps it 0.1, so no 0.1000000000000000055 tail.
    assert invocation_cost_usd(s, "H100", 0, 0.1, requests=0) == Decimal("0.0001097")
    c = invocation_cost_usd(s, "cpu", 128, 0.123456789)
    assert c == c.quantize(COST_QUANTUM) and c.as_tuple().exponent == -10
    # Half-even: 1e-10 * 0.5 rounds to 0, 1e-10 * 1.5 rounds to 2e-10.
    tiny = PriceSheet(Decimal(0), {"X": Decimal("1e-10")}, Decimal(0), Decimal(0))
    assert invocation_cost_usd(tiny, "X", 0, 0.5) == 0
    assert invocation_cost_usd(tiny, "X", 0, 1.5) == Decimal("2e-10")
    assert invocation_cost_usd(tiny, "X", 0, 2.5) == Decimal("2e-10")
    with pytest.raises(ValueError):
        invocation_cost_usd(s, "H100", 0, -1.0)


def test_sum_of_1000_costs_is_the_cost_of_the_sum():
    s = default_prices()
    costs = [invocation_cost_usd(s, "H100", 0, 0.25) for _ in range(1000)]
    total = sum(costs, Decimal(0))
    assert total == invocation_cost_usd(s, "H100", 0, 250.0, requests=1000)
    assert total == Decimal("0.27445")
    # Floats would not have been exact.
    assert sum([0.00027445] * 1000) != 0.27445


def test_cost_is_independent_of_the_callers_decimal_context():
    import decimal
    s = default_prices()
    want = invocation_cost_usd(s, "cpu", 3008, 12.345678)
    with decimal.localcontext() as ctx:
        ctx.prec = 6
        ctx.rounding = decimal.ROUND_DOWN
        assert invocation_cost_usd(s, "cpu", 3008, 12.345678) == want


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_override_merges_over_defaults(tmp_path):
    p = write(tmp_path, "prices.toml", '''
request_usd = "0.0000004"
[gpu_second_usd]
H100 = 0.002
L40S = "0.0005"
[cpu]
mb_per_vcpu = 1024
[sources]
"gpu_second_usd.L40S" = "quote 2026-01"
''')
    s = load_prices(p)
    d = default_prices()
    assert s.request_usd == Decimal("0.0000004")
    assert s.gpu_second_usd["H100"] == Decimal("0.002")      # float parsed via str: exact
    assert s.gpu_second_usd["L40S"] == Decimal("0.0005")
    assert s.gpu_second_usd["A100"] == d.gpu_second_usd["A100"]  # kept
    assert s.cpu_vcpu_second_usd == d.cpu_vcpu_second_usd
    assert s.mb_per_vcpu == 1024
    assert s.sources["gpu_second_usd.L40S"] == "quote 2026-01"
    assert s.sources["gpu_second_usd.H100"] == f"price file {p}"
    assert s.sources["gpu_second_usd.A100"] == d.sources["gpu_second_usd.A100"]


def test_yaml_override(tmp_path):
    p = write(tmp_path, "prices.yaml", '''
request_usd: 0
gpu_second_usd:
  H100: "0.003"
cpu:
  vcpu_second_usd: 0.00001
  gib_second_usd: "1e-6"
''')
    s = load_prices(p)
    assert s.request_usd == 0
    assert s.gpu_second_usd["H100"] == Decimal("0.003")
    assert s.cpu_vcpu_second_usd == Decimal("0.00001")
    assert s.cpu_gib_second_usd == Decimal("1e-6")


def test_empty_yaml_keeps_defaults(tmp_path):
    assert load_prices(write(tmp_path, "p.yml", "")) == default_prices()


def test_example_price_file_loads():
    s = load_prices(REPO / "docs" / "prices.example.toml")
    assert s.gpu_second_usd["H100"] == Decimal("0.001097")
    assert s.cpu_vcpu_second_usd == Decimal("0.0000112444")


@pytest.mark.parametrize("name,text,key", [
    ("p.toml", 'request_usd = "-0.1"', "request_usd"),
    ("p.toml", 'request_usd = "cheap"', "request_usd"),
    ("p.toml", 'request_usd = "nan"', "request_usd"),
    ("p.toml", "request_usd = true", "request_usd"),
    ("p.toml", "[gpu_second_usd]\nH100 = -1", "gpu_second_usd.H100"),
    ("p.toml", '[gpu_second_usd]\nH100 = "1x"', "gpu_second_usd.H100"),
    ("p.toml", "[gpu_second_usd]\ncpu = 1", "gpu_second_usd.cpu"),
    ("p.toml", "gpu_second_usd = 3", "gpu_second_usd"),
    ("p.toml", "[cpu]\nvcpu_second_usd = [1]", "cpu.vcpu_second_usd"),
    ("p.toml", "[cpu]\nmb_per_vcpu = 0", "cpu.mb_per_vcpu"),
    ("p.toml", "[cpu]\nmb_per_vcpu = 1.5", "cpu.mb_per_vcpu"),
    ("p.toml", "[cpu]\nmemory = 1", "cpu.memory"),
    ("p.toml", "request_fee = 1", "request_fee"),
    ("p.toml", "[sources]\nrequest_usd = 1", "sources.request_usd"),
    ("p.toml", "request_usd = = 1", "bad TOML"),
    ("p.yaml", "gpu_second_usd:\n  H100: -0.5", "gpu_second_usd.H100"),
    ("p.yaml", "gpu_second_usd: [1, 2", "bad YAML"),
    ("p.yaml", "- 1\n- 2", "(top level)"),
    ("p.json", "{}", ".json"),
])
def test_bad_price_files_name_file_and_key(tmp_path, name, text, key):
    p = write(tmp_path, name, text)
    with pytest.raises(PriceFileError) as info:
        load_prices(p)
    msg = str(info.value)
    assert str(p) in msg and key in msg
    assert "\n" not in msg
    assert isinstance(info.value, InvalidParameter)


def test_unreadable_price_file(tmp_path):
    p = tmp_path / "missing.toml"
    with pytest.raises(PriceFileError, match="missing.toml.*cannot read"):
        load_prices(p)


def test_yaml_without_pyyaml(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "yaml", None)   # makes `import yaml` raise ImportError
    with pytest.raises(PriceFileError, match="PyYAML"):
        load_prices(write(tmp_path, "p.yaml", "request_usd: 0"))
