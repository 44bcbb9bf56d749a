"""Prices: what one request and one device-second cost (IO-free apart from ``load_prices``).

Money is ``Decimal`` everywhere: a report sums thousands of sub-cent costs, and floats would
make the total differ from the sum of its rows. Per-invocation costs are quantized once, to
``COST_QUANTUM``, when they are stored; reports add the stored values exactly.

The defaults are public list prices (see ``default_prices``), so that a cost is comparable with
what a managed serverless offer would charge; a price file overrides them. Format (TOML, or
the same structure in YAML; every key optional, values are strings or numbers and are parsed
with ``Decimal(str(v))``)::

    request_usd = "0.0000002"          # per request
    [gpu_second_usd]                   # device type -> $ per GPU-second; merged over defaults
    H100 = "0.001097"
    RTX4090 = "0.0004"                 # a type the defaults lack (see device_type_for)
    [cpu]
    vcpu_second_usd = "0.0000112444"
    gib_second_usd = "0.0000012347"
    mb_per_vcpu = 1769                 # memory that buys one vCPU (Lambda's rule)
    [sources]                          # optional: where each price comes from
    "gpu_second_usd.H100" = "my contract, 2026-01"

A price the file sets without a ``[sources]`` entry is sourced as "price file <path>".
See ``docs/prices.example.toml``.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from slfaas.errors import InvalidParameter

# Stored per-invocation costs have this precision ($1e-10: a request fee is $2e-7).
COST_QUANTUM = Decimal("1e-10")
# Per-second rates derived from hourly prices keep 16 decimals (error < $1e-10 per 1e6 s).
RATE_QUANTUM = Decimal("1e-16")
# Enough digits that no product of a rate and a duration is rounded before quantization,
# whatever the caller's decimal context.
_CTX = Context(prec=50, rounding=ROUND_HALF_EVEN)
_HOUR_S = Decimal(3600)

CPU = "cpu"


class UnknownDeviceType(InvalidParameter):
    """A device type has no price in the sheet."""


class PriceFileError(InvalidParameter):
    """A price file cannot be read or holds a bad value."""


@dataclass(frozen=True)
class PriceSheet:
    request_usd: Decimal                        # per request
    gpu_second_usd: Mapping[str, Decimal]       # device type -> $ per GPU-second
    cpu_vcpu_second_usd: Decimal
    cpu_gib_second_usd: Decimal
    mb_per_vcpu: int = 1769                     # Lambda: vCPU share proportional to memory
    sources: Mapping[str, str] = field(default_factory=dict)  # price key -> public source
    currency: str = "USD"

    def __post_init__(self) -> None:
        for name, value in (("request_usd", self.request_usd),
                            ("cpu_vcpu_second_usd", self.cpu_vcpu_second_usd),
                            ("cpu_gib_second_usd", self.cpu_gib_second_usd),
                            *((f"gpu_second_usd.{k}", v) for k, v in self.gpu_second_usd.items())):
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise InvalidParameter(f"price {name} must be a finite Decimal >= 0, got {value!r}")
        if CPU in self.gpu_second_usd:
            raise InvalidParameter("gpu_second_usd cannot price 'cpu'; use the cpu prices")
        if isinstance(self.mb_per_vcpu, bool) or not isinstance(self.mb_per_vcpu, int) or self.mb_per_vcpu <= 0:
            raise InvalidParameter(f"mb_per_vcpu must be a positive integer, got {self.mb_per_vcpu!r}")
        # Read-only views: a sheet is shared by threads and must not change under them.
        object.__setattr__(self, "gpu_second_usd", MappingProxyType(dict(self.gpu_second_usd)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def device_types(self) -> tuple[str, ...]:
        return (CPU, *sorted(self.gpu_second_usd))


def _per_second(per_hour_usd: str) -> Decimal:
    with localcontext(_CTX):
        return (Decimal(per_hour_usd) / _HOUR_S).quantize(RATE_QUANTUM)


_MODAL = "https://modal.com/pricing (list price as published, as listed 2025; check before use)"


def default_prices() -> PriceSheet:
    """Public list prices. GPU: Modal's serverless per-second prices, the closest public
    analogue of a per-GPU-second serverless charge. CPU: AWS Fargate Linux/x86 us-east-1,
    per vCPU-hour and GB-hour, converted to seconds. Request fee: AWS Lambda."""
    gpu = {
        "H100": Decimal("0.001097"),       # Modal H100, list price as published
        "H200": Decimal("0.001261"),       # Modal H200, list price as published
        "A100-80GB": Decimal("0.000694"),  # Modal A100 80 GB, list price as published
        "A100": Decimal("0.000583"),       # Modal A100 40 GB, list price as published
        "L4": Decimal("0.000222"),         # Modal L4, list price as published
        "A10G": Decimal("0.000306"),       # Modal A10G, list price as published
    }
    sources = {
        # AWS Lambda: $0.20 per 1M requests.
        "request_usd": "https://aws.amazon.com/lambda/pricing/ ($0.20 per 1M requests, as listed 2025)",
        # AWS Fargate Linux/x86 us-east-1: $0.04048 per vCPU-hour, $0.004445 per GB-hour.
        "cpu.vcpu_second_usd": "https://aws.amazon.com/fargate/pricing/ (Linux/x86 us-east-1, "
                               "$0.04048 per vCPU-hour, as listed 2025)",
        "cpu.gib_second_usd": "https://aws.amazon.com/fargate/pricing/ (Linux/x86 us-east-1, "
                              "$0.004445 per GB-hour, as listed 2025)",
        "cpu.mb_per_vcpu": "https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html "
                           "(1,769 MB = 1 vCPU)",
        **{f"gpu_second_usd.{k}": _MODAL for k in gpu},
    }
    return PriceSheet(
        request_usd=Decimal("0.0000002"),     # $0.20 per 1M requests
        gpu_second_usd=gpu,
        cpu_vcpu_second_usd=_per_second("0.04048"),
        cpu_gib_second_usd=_per_second("0.004445"),
        mb_per_vcpu=1769,
        sources=sources,
    )


# Vendor words that precede the model in torch / NVML names ("NVIDIA GeForce RTX 4090").
_VENDOR_WORDS = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO", "AMD", "INSTINCT", "RADEON"}
_SERIES_WORDS = {"RTX", "GTX", "TITAN"}


def device_type_for(device: str, gpu_name: str | None = None) -> str:
    """The price-sheet key of a device: "cpu", or a GPU model ("H100", "A100-80GB", ...) from
    its torch / NVML name. An unknown model gives its short model token ("NVIDIA L40S" ->
    "L40S", "NVIDIA GeForce RTX 4090" -> "RTX4090"), which a price file can then name; a GPU
    without a name gives "GPU"."""
    if device.split(":", 1)[0].strip().lower() == CPU:
        return CPU
    if not gpu_name or not gpu_name.strip():
        return "GPU"
    name = gpu_name.upper()
    if re.search(r"\bH200\b", name):
        return "H200"
    if re.search(r"\bH100\b", name):
        return "H100"
    if re.search(r"\bA100\b", name):
        return "A100-80GB" if re.search(r"\b80\s*GB\b", name) else "A100"
    if re.search(r"\bA10G\b", name):
        return "A10G"
    if re.search(r"\bL4\b", name):
        return "L4"
    tokens = [t for t in re.split(r"[\s_]+", name) if t and t not in _VENDOR_WORDS]
    if not tokens:
        return "GPU"
    if tokens[0] in _SERIES_WORDS and len(tokens) > 1:
        return tokens[0] + tokens[1]
    return tokens[0]


def device_second_usd(sheet: PriceSheet, device_type: str, memory_mb: int) -> Decimal:
    """$ per billed device-second. A GPU is billed whole; CPU like Lambda/Fargate: vCPUs in
    proportion to the function's memory, plus the memory itself."""
    if device_type == CPU:
        if memory_mb <= 0:
            raise InvalidParameter(f"memory_mb must be positive, got {memory_mb}")
        with localcontext(_CTX):
            mem = Decimal(memory_mb)
            return (mem / Decimal(sheet.mb_per_vcpu) * sheet.cpu_vcpu_second_usd
                    + mem / Decimal(1024) * sheet.cpu_gib_second_usd)
    try:
        return sheet.gpu_second_usd[device_type]
    except KeyError:
        raise UnknownDeviceType(
            f"no price for device type {device_type!r} (known: {', '.join(sheet.device_types())}); "
            f"add it under [gpu_second_usd] in a price file, e.g. {device_type} = \"0.001\"") from None


def invocation_cost_usd(sheet: PriceSheet, device_type: str, memory_mb: int,
                        billed_device_s: float, requests: int = 1) -> Decimal:
    """Request fees plus billed device seconds at the device's rate, quantized to
    ``COST_QUANTUM`` (half-even, so rounding does not drift a sum in one direction)."""
    if not math.isfinite(billed_device_s) or billed_device_s < 0:
        raise ValueError(f"billed_device_s must be finite and >= 0, got {billed_device_s}")
    if requests < 0:
        raise ValueError(f"requests must be >= 0, got {requests}")
    rate = device_second_usd(sheet, device_type, memory_mb)
    with localcontext(_CTX):
        # repr gives the shortest decimal that round-trips the float: 0.1 -> Decimal("0.1").
        cost = sheet.request_usd * requests + Decimal(repr(float(billed_device_s))) * rate
        return cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


# ---- price files ----------------------------------------------------------------------------

_TOP_KEYS = {"request_usd", "gpu_second_usd", "cpu", "sources"}
_CPU_KEYS = {"vcpu_second_usd", "gib_second_usd", "mb_per_vcpu"}


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise PriceFileError(f"{path}: unknown price file type {suffix or '(none)'!r}; use .toml, .yaml or .yml")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PriceFileError(f"{path}: cannot read price file: {e.strerror or e}") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise PriceFileError(f"{path}: bad TOML: {e}") from None
    try:
        import yaml  # lazily: only YAML price files need PyYAML
    except ImportError:
        raise PriceFileError(f"{path}: YAML price files need PyYAML (pip install pyyaml), "
                             "or write the file as TOML") from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        detail = " ".join(str(e).split())
        raise PriceFileError(f"{path}: bad YAML: {detail}") from None
    return {} if data is None else data


def _price(path: Path, key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PriceFileError(f"{path}: {key}: expected a number or a numeric string, got {value!r}")
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceFileError(f"{path}: {key}: not a number: {value!r}") from None
    if not price.is_finite():
        raise PriceFileError(f"{path}: {key}: not a finite number: {value!r}")
    if price < 0:
        raise PriceFileError(f"{path}: {key}: price must be >= 0, got {value!r}")
    return price


def _table(path: Path, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PriceFileError(f"{path}: {key}: expected a table, got {value!r}")
    return value


def _check_keys(path: Path, table: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
    for k in table:
        if k not in allowed:
            raise PriceFileError(f"{path}: {prefix}{k}: unknown key (allowed: {', '.join(sorted(allowed))})")


def load_prices(path: Path, base: PriceSheet | None = None) -> PriceSheet:
    """The default sheet (or ``base``) with the file's prices over it. Any problem raises
    ``PriceFileError`` naming the file and the key."""
    path = Path(path)
    base = base or default_prices()
    data = _table(path, "(top level)", _read(path))
    _check_keys(path, data, _TOP_KEYS)

    sources = dict(base.sources)
    set_keys: list[str] = []
    request_usd = base.request_usd
    if "request_usd" in data:
        request_usd = _price(path, "request_usd", data["request_usd"])
        set_keys.append("request_usd")

    gpu = dict(base.gpu_second_usd)
    for dtype, value in _table(path, "gpu_second_usd", data.get("gpu_second_usd", {})).items():
        key = f"gpu_second_usd.{dtype}"
        if not isinstance(dtype, str) or not dtype.strip():
            raise PriceFileError(f"{path}: {key}: device type must be a non-empty name")
        if dtype == CPU:
            raise PriceFileError(f"{path}: {key}: price the CPU under [cpu], not [gpu_second_usd]")
        gpu[dtype] = _price(path, key, value)
        set_keys.append(key)

    cpu = _table(path, "cpu", data.get("cpu", {}))
    _check_keys(path, cpu, _CPU_KEYS, "cpu.")
    vcpu = base.cpu_vcpu_second_usd
    gib = base.cpu_gib_second_usd
    if "vcpu_second_usd" in cpu:
        vcpu = _price(path, "cpu.vcpu_second_usd", cpu["vcpu_second_usd"])
        set_keys.append("cpu.vcpu_second_usd")
    if "gib_second_usd" in cpu:
        gib = _price(path, "cpu.gib_second_usd", cpu["gib_second_usd"])
        set_keys.append("cpu.gib_second_usd")
    mb_per_vcpu = base.mb_per_vcpu
    if "mb_per_vcpu" in cpu:
        value = cpu["mb_per_vcpu"]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PriceFileError(f"{path}: cpu.mb_per_vcpu: expected a positive integer, got {value!r}")
        mb_per_vcpu = value
        set_keys.append("cpu.mb_per_vcpu")

    for key in set_keys:
        sources[key] = f"price file {path}"
    for key, text in _table(path, "sources", data.get("sources", {})).items():
        if not isinstance(text, str):
            raise PriceFileError(f"{path}: sources.{key}: expected a string, got {text!r}")
        sources[str(key)] = text

    return PriceSheet(request_usd=request_usd, gpu_second_usd=gpu, cpu_vcpu_second_usd=vcpu,
                      cpu_gib_second_usd=gib, mb_per_vcpu=mb_per_vcpu, sources=sources,
                      currency=base.currency)
