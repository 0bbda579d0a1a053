"""CPU features beside latency figures (export/cpu.py): parsing of /proc/cpuinfo texts, no failure elsewhere."""

from __future__ import annotations

import json

import pytest

from export.cpu import cpu_class, cpu_features, parse_cpuinfo, short_model

INTEL_VNNI = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz
flags		: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8 lm

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz
flags		: fpu avx2
"""

AMD_AVX2 = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC 7763 64-Core Processor
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx mmxext lm avx fma avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq
bugs		: sysret_ss_attrs spectre_v1 spectre_v2

"""

ARM_DOTPROD = """\
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

processor	: 1
Features	: fp asimd
"""

ARM_OLD = """\
processor	: 0
model name	: ARMv7 Processor rev 4 (v7l)
Features	: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
"""


def test_intel_with_vnni_and_amx():
    info = parse_cpuinfo(INTEL_VNNI)
    f = info["features"]
    assert f["avx2"] and f["avx512f"] and f["avx512_vnni"] and f["avx_vnni"] and f["amx"]
    assert not f["dotprod"] and not f["i8mm"]
    assert info["vnni"] and info["int8_dot"] and info["arch"] == "x86_64"
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz"  # not "143" (the model number)
    assert cpu_class(info) == "Intel Xeon Platinum 8480+, AVX512-VNNI, AMX"


def test_amd_avx2_without_vnni():
    info = parse_cpuinfo(AMD_AVX2)
    f = info["features"]
    assert f["avx2"] and not f["avx512f"] and not f["avx512_vnni"] and not f["avx_vnni"] and not f["amx"]
    assert info["vnni"] is False and info["int8_dot"] is False
    assert cpu_class(info) == "AMD EPYC 7763, AVX2 (no VNNI)"


def test_arm_dotprod():
    info = parse_cpuinfo(ARM_DOTPROD, "aarch64")
    f = info["features"]
    assert f["dotprod"] and not f["i8mm"] and not f["avx2"]
    assert info["arch"] == "aarch64" and info["int8_dot"] and not info["vnni"]
    assert "0xd0c" in info["model"]  # no model name line: implementer and part instead
    assert cpu_class(info).endswith(", dotprod")
    old = parse_cpuinfo(ARM_OLD, "armv7l")
    assert not old["int8_dot"] and cpu_class(old).endswith("no dotprod/i8mm")


def test_intel_avx512_without_vnni_and_no_avx2():
    skylake = AMD_AVX2.replace("AMD EPYC 7763 64-Core Processor", "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz").replace("avx2", "avx2 avx512f")
    assert cpu_class(parse_cpuinfo(skylake)) == "Intel Xeon Gold 6148, AVX512 (no VNNI)"
    assert cpu_class(parse_cpuinfo("model name : Old\nflags : fpu sse2 lm\n")).endswith("no AVX2")


@pytest.mark.parametrize("text", ["", "garbage without colons\n\n", "flags :\n"])
def test_odd_text_does_not_raise(text):
    info = parse_cpuinfo(text)
    assert not any(info["features"].values()) and isinstance(cpu_class(info), str)


def test_no_proc_cpuinfo_never_fails(tmp_path):
    info = cpu_features(str(tmp_path / "missing"))  # macOS, Windows
    assert info["vnni"] is None and "unavailable" in info["source"]
    assert cpu_class(info).endswith("int8 features unknown")
    json.dumps(info)  # goes into report.json as it is


def test_this_machine_and_machine_line():
    info = cpu_features()
    json.dumps(info)
    assert isinstance(cpu_class(info), str) and cpu_class(info)
    from benchmarks.common import cpu_class as bench_class, machine_line

    assert bench_class() == cpu_class(info)
    assert bench_class() in machine_line()


def test_short_model():
    assert short_model("AMD EPYC 7763 64-Core Processor") == "AMD EPYC 7763"
    assert short_model("Intel(R) Xeon(R) Processor") == "Intel Xeon"


def test_export_benchmark_other_cpus_section():
    from benchmarks.export import OTHER_CPUS_TITLE, other_cpus_section, replace_section

    section = other_cpus_section(None, "")
    text = "# Export benchmark\n\n| table |\n"
    once = replace_section(text, OTHER_CPUS_TITLE, section)
    assert once.startswith(text) and once.count(OTHER_CPUS_TITLE) == 1
    assert "AVX2 (no VNNI)" in once and "NOT measured by this benchmark" in once and "2.1x" in once
    assert replace_section(once, OTHER_CPUS_TITLE, section) == once  # rewritten in place, not appended twice
    before = once + "\n## later\n\ntext\n"
    assert replace_section(before, OTHER_CPUS_TITLE, section).endswith("## later\n\ntext\n")
