"""Which CPU a latency figure was measured on, and which int8 instructions it has.

int8 speed relative to fp32 depends on the CPU more than on anything in this repository: onnxruntime's
u8 x s8 kernels use VNNI (``vpdpbusd``: AVX512-VNNI, AVX-VNNI) or AMX where present, and fall back to
AVX2 ``vpmaddubsw`` otherwise, which is slower and whose 16-bit intermediate sums can saturate (see
``export/quantize.py``, ``reduce_range``). On ARM the counterparts are the dot-product (``asimddp``)
and int8 matrix-multiply (``i8mm``) extensions. Measured here: int8 4.0x faster than ORT fp32 on an
Intel Xeon with AVX512-VNNI; reported on an AMD EPYC (Zen 3) with AVX2 only: 2.1x (PLATFORM.md).

Standard library only (the app and ``benchmarks/common.py`` import it too). Reads ``/proc/cpuinfo``;
on other systems (macOS, Windows) the model comes from :mod:`platform` and the features are unknown:
nothing here raises.
"""

from __future__ import annotations

import platform
import re

# /proc/cpuinfo flag -> name reported. x86 "flags" line; ARM "Features" line.
X86_FEATURES = {"avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
                "amx_int8": "amx", "amx_tile": "amx"}
ARM_FEATURES = {"asimddp": "dotprod", "i8mm": "i8mm"}
FEATURE_NAMES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "dotprod", "i8mm")


def parse_cpuinfo(text: str, machine: str = "") -> dict:
    """CPU model and int8-relevant features from the text of ``/proc/cpuinfo`` (first CPU's block).

    Returns ``{"model", "arch", "features": {name: bool}, "vnni": bool, "int8_dot": bool, "source"}``;
    ``features`` holds the x86 names (avx2, avx512f, avx512_vnni, avx_vnni, amx) and the ARM ones
    (dotprod = ``asimddp``, i8mm), each True or False. ``int8_dot`` is True when the CPU has a
    native int8 dot-product instruction (VNNI or AMX on x86, dotprod or i8mm on ARM).
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            if fields and not line.strip():  # end of the first processor's block
                if "flags" in fields or "features" in fields:
                    break
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        fields.setdefault(key.lower(), value)
    x86_flags = set(fields.get("flags", "").split())
    arm_flags = set(fields.get("features", "").split())
    present = {X86_FEATURES[f] for f in x86_flags if f in X86_FEATURES}
    present |= {ARM_FEATURES[f] for f in arm_flags if f in ARM_FEATURES}
    features = {name: name in present for name in FEATURE_NAMES}
    if x86_flags:
        arch = "x86_64" if "lm" in x86_flags else "x86"
    elif arm_flags:
        arch = "aarch64" if ("asimd" in arm_flags or "fp" in arm_flags) else "arm"
    else:
        arch = machine or "unknown"
    model = fields.get("model name") or fields.get("hardware") or fields.get("model") or ""
    if not model or model.isdigit():  # x86 "model : 143" is a number; ARM often has no model name
        impl, part = fields.get("cpu implementer"), fields.get("cpu part")
        model = f"ARM CPU (implementer {impl}, part {part})" if impl else (model or "unknown CPU")
    vnni = features["avx512_vnni"] or features["avx_vnni"] or features["amx"]
    return {
        "model": model,
        "arch": arch,
        "features": features,
        "vnni": vnni,
        "int8_dot": vnni or features["dotprod"] or features["i8mm"],
        "source": "/proc/cpuinfo",
    }


def cpu_features(path: str = "/proc/cpuinfo") -> dict:
    """:func:`parse_cpuinfo` of this machine; never raises (other OSes: model from :mod:`platform`,
    features unknown, ``source`` says so)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            info = parse_cpuinfo(f.read(), platform.machine())
        if info["model"] == "unknown CPU":
            info["model"] = platform.processor() or info["model"]
        return info
    except Exception:  # no /proc (macOS, Windows), unreadable, or odd contents
        return {
            "model": platform.processor() or platform.machine() or "unknown CPU",
            "arch": platform.machine() or "unknown",
            "features": {name: None for name in FEATURE_NAMES},
            "vnni": None,
            "int8_dot": None,
            "source": "unavailable (no /proc/cpuinfo): features unknown",
        }


def short_model(model: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz' -> 'Intel Xeon Platinum 8480+';
    'AMD EPYC 7763 64-Core Processor' -> 'AMD EPYC 7763'."""
    s = re.sub(r"\((R|TM|r|tm)\)", "", model)
    s = re.sub(r"@.*$", "", s)
    s = re.sub(r"\b\d+-Core\b", "", s)
    s = re.sub(r"\b(CPU|Processor)\b", "", s)
    return " ".join(s.split()) or model


def cpu_class(info: dict | None = None) -> str:
    """One line for beside a latency figure: 'Intel Xeon, AVX512-VNNI, AMX', 'AMD EPYC 7763, AVX2 (no
    VNNI)', 'ARM CPU (...), dotprod, i8mm', or '..., int8 features unknown'."""
    info = cpu_features() if info is None else info
    name = short_model(str(info.get("model", "unknown CPU")))
    f = info.get("features") or {}
    if info.get("vnni") is None and not any(f.values()):
        return f"{name}, int8 features unknown"
    if info.get("arch", "").startswith(("arm", "aarch")) or f.get("dotprod") or f.get("i8mm"):
        parts = [n for n in ("dotprod", "i8mm") if f.get(n)]
        return f"{name}, {', '.join(parts)}" if parts else f"{name}, no dotprod/i8mm"
    parts = []
    if f.get("avx512_vnni"):
        parts.append("AVX512-VNNI")
    elif f.get("avx_vnni"):
        parts.append("AVX-VNNI")
    if f.get("amx"):
        parts.append("AMX")
    if parts:
        return f"{name}, {', '.join(parts)}"
    if f.get("avx512f"):
        return f"{name}, AVX512 (no VNNI)"
    if f.get("avx2"):
        return f"{name}, AVX2 (no VNNI)"
    return f"{name}, no AVX2"
