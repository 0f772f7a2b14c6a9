"""Shared by the benchmark scripts (each runs as `python benchmarks/<script>.py`, so this folder is on sys.path)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name, for the "machine" line every benchmark table carries, with the oneDNN cap when one is
    set (``make ... CPU=avx2``: the figures are then those of AVX2 kernels, bf16 emulated)."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{name}, capped at ONEDNN_MAX_CPU_ISA={cap}" if cap else name


def default_variants(variants: dict, precision_of) -> list[str]:
    """The variant names to run by default: all of them, except those that ask for bf16 explicitly on a CPU where
    bf16 is emulated (~8x slower than fp32 there: they would time the emulation; name them to run them anyway).
    ``precision_of(value)``: a variant's precision setting."""
    from kubedistill.training.precision import cpu_has_fast_bf16

    if cpu_has_fast_bf16():
        return list(variants)
    skipped = [name for name, value in variants.items() if "bf16" in precision_of(value)]
    if skipped:
        print(f"bf16 is emulated on this CPU: not running {'; '.join(skipped)} (name them with --variants to run "
              "them); precision auto is fp32 here", flush=True)  # fmt: skip
    return [name for name in variants if name not in skipped]
