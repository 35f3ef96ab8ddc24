"""The accelerator catalog: device priors from ``hetero/data/accelerators.yaml`` and name resolution.

``resolve("A100")`` returns the catalog's :class:`DeviceType` for an NVIDIA A100 SXM4 80GB; aliases such as
"a100-80g", "H100", "MI300X", "910B" resolve the same way, and an unknown name raises a ConfigError that lists
close matches. The YAML keeps its sources per device (see ``accelerators.md`` beside it).

    python -c "from hetero.cluster.catalog import resolve; print(resolve('MI250X'))"
"""

from __future__ import annotations

import difflib
import functools
import re
from importlib import resources
from typing import Any

import yaml

from hetero.cluster.spec import DeviceType
from hetero.config import ConfigError

GIB = 1024**3

# Short names users type, mapped to catalog ids. Names that are the catalog id without its vendor prefix
# (e.g. "a100_sxm4_40gb", "A100-SXM4-40GB") resolve without being listed here.
ALIASES: dict[str, str] = {
    "v100": "nvidia_v100_sxm2_32gb", "v100-32g": "nvidia_v100_sxm2_32gb", "v100-32gb": "nvidia_v100_sxm2_32gb",
    "t4": "nvidia_t4", "a10": "nvidia_a10",
    "a100": "nvidia_a100_sxm4_80gb", "a100-80g": "nvidia_a100_sxm4_80gb", "a100-80gb": "nvidia_a100_sxm4_80gb",
    "a100-40g": "nvidia_a100_sxm4_40gb", "a100-40gb": "nvidia_a100_sxm4_40gb",
    "a100-pcie": "nvidia_a100_pcie_80gb", "a800": "nvidia_a800_sxm4_80gb", "l4": "nvidia_l4", "l40s": "nvidia_l40s",
    "rtx4090": "nvidia_rtx_4090", "4090": "nvidia_rtx_4090", "rtx3090": "nvidia_rtx_3090", "3090": "nvidia_rtx_3090",
    "h100": "nvidia_h100_sxm5_80gb", "h100-sxm": "nvidia_h100_sxm5_80gb", "h100-pcie": "nvidia_h100_pcie_80gb",
    "h800": "nvidia_h800_sxm5_80gb", "h20": "nvidia_h20", "h200": "nvidia_h200_sxm_141gb",
    "b200": "nvidia_b200", "gb200": "nvidia_gb200_per_gpu",
    "mi100": "amd_mi100", "mi210": "amd_mi210", "mi250x": "amd_mi250x", "mi250": "amd_mi250x",
    "mi300x": "amd_mi300x", "mi300": "amd_mi300x", "mi325x": "amd_mi325x",
    "910b": "huawei_ascend_910b", "ascend910b": "huawei_ascend_910b", "ascend-910b": "huawei_ascend_910b",
    "910a": "huawei_ascend_910a", "910": "huawei_ascend_910a", "ascend910": "huawei_ascend_910a",
    "gaudi2": "intel_gaudi2", "gaudi3": "intel_gaudi3", "max1550": "intel_max_1550", "pvc": "intel_max_1550",
    "mlu370": "cambricon_mlu370_x8", "mlu370-x8": "cambricon_mlu370_x8",
    "tpuv4": "google_tpu_v4", "tpu-v4": "google_tpu_v4", "tpuv5e": "google_tpu_v5e", "tpu-v5e": "google_tpu_v5e",
    "tpuv5p": "google_tpu_v5p", "tpu-v5p": "google_tpu_v5p",
}

# A generic CPU prior for cluster files that say ``type: cpu``. Deliberately rough (a 32-core AVX-512 server
# socket); ``hetero discover`` measures the real machine and ``hetero profile`` calibrates it.
CPU_PRIOR = DeviceType(
    id="cpu", name="Generic CPU socket (prior; run `hetero discover` for measured numbers)", vendor="generic",
    memory_bytes=256 * GIB, memory_bandwidth=200e9,
    peak_flops={"fp32": 2.0e12, "bf16": 2.0e12, "fp16": 1.0e12},
    torch_device="cpu", dist_backend="gloo", intra_bandwidth=50e9, inter_bandwidth=100e9 / 8,
    matmul_efficiency=0.6,
)

_VENDOR_PREFIX = re.compile(r"^(nvidia|amd|huawei|intel|cambricon|google)_")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _first_word(value: Any) -> str:
    """'cuda (ROCm/HIP build ...)' -> 'cuda'."""
    return str(value).split()[0].strip("'\"") if value else ""


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@functools.lru_cache(maxsize=1)
def _raw() -> dict:
    text = resources.files("hetero").joinpath("data/accelerators.yaml").read_text()
    return yaml.safe_load(text)


def _efficiency_prior(dev_id: str, priors: dict) -> float:
    """Measured matmul efficiency (achieved / peak bf16) for this device or its closest relative, else 0.75."""
    table = priors.get("matmul_mamf_bf16", {})
    stem = _VENDOR_PREFIX.sub("", dev_id)
    best = None
    for key, rec in table.items():
        kstem = _VENDOR_PREFIX.sub("", key)
        if kstem == stem:
            return float(rec["efficiency"])
        if best is None and (stem.startswith(kstem) or kstem.startswith(stem.split("_")[0] + "_")):
            best = float(rec["efficiency"])
    return best if best is not None else 0.75


def _device_from_entry(e: dict, priors: dict) -> DeviceType:
    per = e.get("per_torch_device") or {}
    flops: dict[str, float] = {}
    for dtype in ("fp32", "tf32", "bf16", "fp16", "fp8"):
        v = _num(per.get(f"{dtype}_tflops", e.get(f"{dtype}_tflops")))
        if v:
            flops[dtype] = v * 1e12
    if "fp32" not in flops and _num(e.get("fp32_matrix_tflops")):
        flops["fp32"] = float(e["fp32_matrix_tflops"]) * 1e12
    intra = _num((e.get("intra_node") or {}).get("per_gpu_gbs_unidirectional"))
    inter = _num((e.get("inter_node") or {}).get("per_gpu_gbps"))
    return DeviceType(
        id=e["id"], name=e["name"], vendor=e.get("vendor", ""),
        memory_bytes=int(float(per.get("memory_gib", e["memory_gib"])) * GIB),
        memory_bandwidth=float(per.get("memory_bandwidth_gbs", e["memory_bandwidth_gbs"])) * 1e9,
        peak_flops=flops,
        torch_device=_first_word(e.get("torch_device")) or "cuda",
        dist_backend=_first_word(e.get("torch_dist_backend")) or "gloo",
        intra_bandwidth=(intra or 16.0) * 1e9,
        inter_bandwidth=(inter or 100.0) * 1e9 / 8,
        matmul_efficiency=_efficiency_prior(e["id"], priors),
    )


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, DeviceType]:
    """All catalog devices by id, plus the generic ``cpu`` prior."""
    raw = _raw()
    priors = raw.get("measured_priors", {})
    out = {e["id"]: _device_from_entry(e, priors) for e in raw["devices"]}
    out["cpu"] = CPU_PRIOR
    return out


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for dev_id in catalog():
        idx[_norm(dev_id)] = dev_id
        idx[_norm(_VENDOR_PREFIX.sub("", dev_id))] = dev_id
    for alias, dev_id in ALIASES.items():
        idx[_norm(alias)] = dev_id
    return idx


def known_names() -> list[str]:
    """Every id and alias the catalog resolves (for error messages and docs)."""
    return sorted(set(catalog()) | set(ALIASES))


def resolve(name: str, path: str = "") -> DeviceType:
    """The catalog DeviceType for an id or alias (case, '-', '_' and spaces ignored); unknown names raise a
    ConfigError at ``path`` listing close matches."""
    key = _norm(name)
    dev_id = _index().get(key)
    if dev_id is None:
        close = difflib.get_close_matches(name.lower(), known_names(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `hetero catalog` for the list"
        raise ConfigError(path, f"unknown device type {name!r}{hint}")
    return catalog()[dev_id]


def sources(dev_id: str) -> list[str]:
    """The catalog's source URLs for a device id."""
    for e in _raw()["devices"]:
        if e["id"] == dev_id:
            return list(e.get("sources", []))
    return []
