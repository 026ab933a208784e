"""Meters: each test can fail if the meter lies (wrong units, lost peaks, fake zeros)."""
from __future__ import annotations

import importlib.machinery
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bpfree import meters
from bpfree.meters import EnergyMeter, FlopMeter, Measurement, MemoryMeter, Timer, git_info, machine_info

MB = 1024 * 1024


def _touch(n_bytes: int) -> np.ndarray:
    """Allocate *and touch* memory (np.empty pages would never become resident)."""
    return np.ones(n_bytes // 8, dtype=np.float64)


def _busy(seconds: float) -> int:
    end, x = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        x += 1
    return x


# ---------------------------------------------------------------------------- Timer


def test_timer_measures_sleep_and_accumulates_laps() -> None:
    timer = Timer()
    with timer:
        time.sleep(0.05)
    lap = timer.laps[0]
    assert 0.045 <= lap < 0.5
    timer.start()
    time.sleep(0.02)
    second = timer.stop()
    assert len(timer.laps) == 2 and second >= 0.018
    assert timer.elapsed_s == pytest.approx(sum(timer.laps))
    m = timer.measurement()
    assert m.unit == "s" and m.method == "perf_counter" and m.value == timer.elapsed_s


def test_timer_never_negative_and_misuse_raises() -> None:
    timer = Timer("cpu")
    for _ in range(100):
        timer.start()
        timer.stop()
    assert all(lap >= 0 for lap in timer.laps) and timer.elapsed_s >= 0
    with pytest.raises(RuntimeError):
        timer.stop()
    timer.start()
    with pytest.raises(RuntimeError):
        timer.start()


def test_timer_syncs_device_before_every_clock_read(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(meters, "sync", lambda device: calls.append(device))
    with Timer("cpu"):
        pass
    assert len(calls) == 2


# ---------------------------------------------------------------------------- Memory


@pytest.mark.skipif(not meters.CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs")
def test_memory_phase_peak_with_hwm_reset() -> None:
    with MemoryMeter() as phase1:
        a = _touch(200 * MB)
        del a
    m1 = phase1.result
    assert m1 is not None and m1.method == "vmhwm", m1
    assert m1.unit == "bytes" and m1.value == phase1.peak_bytes
    assert phase1.delta_bytes is not None and phase1.delta_bytes >= 150 * MB
    assert m1.delta_bytes == phase1.delta_bytes and m1.baseline_bytes == phase1.baseline_bytes

    with MemoryMeter() as phase2:  # must not inherit phase 1's peak
        b = _touch(1 * MB)
        del b
    assert phase2.result is not None and phase2.result.method == "vmhwm"
    assert phase2.delta_bytes is not None and phase2.delta_bytes < 50 * MB
    assert phase2.peak_bytes is not None and phase2.peak_bytes < phase1.peak_bytes - 100 * MB


@pytest.mark.skipif(not meters.CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs")
def test_nested_meter_keeps_outer_peak() -> None:
    with MemoryMeter() as outer:
        a = _touch(200 * MB)
        del a
        with MemoryMeter() as inner:  # resets VmHWM: the outer peak must survive
            pass
    assert inner.delta_bytes is not None and inner.delta_bytes < 50 * MB
    assert outer.delta_bytes is not None and outer.delta_bytes >= 150 * MB


@pytest.mark.skipif(not meters.PROC_STATUS.exists(), reason="needs Linux /proc/self/status")
def test_memory_fallback_when_clear_refs_not_writable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(meters, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    # Raise the lifetime VmHWM first, so the window's peak stays below it: only sampling sees it.
    spike = _touch(300 * MB)
    del spike
    with MemoryMeter(sample_interval_s=0.002) as mm:
        a = _touch(200 * MB)
        time.sleep(0.05)  # let the sampler see it
        del a
    assert mm.result is not None and mm.result.method == "vmrss-sampled", mm.result
    assert "fallback_reason" in mm.result.detail
    assert mm.delta_bytes is not None and mm.delta_bytes >= 150 * MB


@pytest.mark.skipif(not meters.CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs")
def test_memory_fallback_uses_hwm_when_it_grew(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    meters._reset_hwm()  # real reset, before we make it unavailable
    monkeypatch.setattr(meters, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with MemoryMeter(sample_interval_s=1.0) as mm:  # sampler too slow to see the spike
        a = _touch(200 * MB)
        del a
    assert mm.result is not None and mm.result.method == "vmhwm-grew", mm.result
    assert mm.delta_bytes is not None and mm.delta_bytes >= 150 * MB


# ---------------------------------------------------------------------------- Energy


def test_energy_estimate_on_this_machine_is_labelled_and_positive() -> None:
    cap = meters.energy_capability()
    with EnergyMeter() as em:
        _busy(0.2)
    m = em.result
    assert m is not None and m.unit == "J"
    if cap["backend"] in ("tdp", "codecarbon"):
        assert m.method.startswith("estimate") and m.is_estimate
    if m.value is None:
        assert m.reason, "None must come with a reason"
    else:
        assert m.value > 0


def test_tdp_backend_busy_loop_and_math(monkeypatch: pytest.MonkeyPatch) -> None:
    with EnergyMeter(backend="tdp", watts_per_cpu=10.0) as em:
        _busy(0.2)
    m = em.result
    assert m is not None and m.method == "estimate-tdp" and m.value is not None
    # watts × process CPU seconds: a busy loop on one thread uses ~0.2 CPU-s (less if the
    # shared machine preempts us, never much more).
    assert 0.0 < m.value <= 10.0 * 0.2 * 1.5 + 0.5
    assert m.detail["cpu_time_s"] > 0 and 0 < m.detail["busy_fraction"] <= 1.0 + 1e-9
    assert meters.estimate_tdp_energy(cpu_s=1.0, wall_s=2.0, cpus=4, watts_per_cpu=15.0) == pytest.approx(15.0)
    assert meters.estimate_tdp_energy(cpu_s=9.0, wall_s=1.0, cpus=2, watts_per_cpu=15.0) == pytest.approx(30.0)


def test_energy_never_reports_zero_for_a_window() -> None:
    with EnergyMeter(backend="tdp") as em:
        time.sleep(0.01)
    m = em.result
    assert m is not None and m.value != 0
    assert (m.value is not None and m.value > 0) or m.reason


def _fake_rapl(root: Path, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # a sub-zone: must not be double counted
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("0\n")
    return zone


def test_rapl_handles_wraparound(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(meters, "RAPL_ROOT", tmp_path)
    zone = _fake_rapl(tmp_path, 900_000)
    assert meters.energy_capability()["backend"] == "rapl"
    em = EnergyMeter().start()
    (zone / "energy_uj").write_text("100000\n")  # wrapped: 100_000 past the 1_000_000 range
    m = em.stop()
    assert m.method == "rapl" and m.value == pytest.approx(0.2)


def test_unavailable_backend_reports_none_with_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(meters, "RAPL_ROOT", tmp_path / "nothing")
    with EnergyMeter(backend="rapl") as em:
        pass
    assert em.result is not None and em.result.value is None and em.result.reason
    with EnergyMeter("cpu", backend="nvml") as em:
        pass
    assert em.result is not None and em.result.value is None and em.result.reason
    with pytest.raises(ValueError, match="backend"):
        EnergyMeter(backend="online")


class _FakeTracker:
    """Stands in for codecarbon.OfflineEmissionsTracker (not installed here, and offline-only)."""

    def __init__(self, *, country_iso_code: str, save_to_file: bool, log_level: str) -> None:
        self.final_emissions_data = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.final_emissions_data = types.SimpleNamespace(energy_consumed=1e-6)  # kWh


def test_codecarbon_preferred_over_tdp_and_labelled_estimate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = types.ModuleType("codecarbon")
    fake.__spec__ = importlib.machinery.ModuleSpec("codecarbon", None)
    fake.OfflineEmissionsTracker = _FakeTracker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codecarbon", fake)
    monkeypatch.setattr(meters, "RAPL_ROOT", tmp_path / "no-rapl")
    assert meters.energy_capability()["backend"] == "codecarbon"
    with EnergyMeter() as em:
        pass
    m = em.result
    assert m is not None and m.method == "estimate-codecarbon" and m.value == pytest.approx(3.6)
    assert m.detail["scope"] == "machine"  # the fake has no tracking_mode


# ---------------------------------------------------------------------------- FLOPs


def test_flop_meter_counts_linear() -> None:
    layer, x = torch.nn.Linear(100, 50), torch.randn(8, 100)
    with FlopMeter() as fm:
        layer(x)
    assert fm.total == 2 * 8 * 100 * 50
    m = FlopMeter().measure(layer, x)
    assert isinstance(m, Measurement) and m.value == 2 * 8 * 100 * 50
    assert m.unit == "flop" and m.method == "flop-counter"


# ---------------------------------------------------------------------------- provenance


def test_machine_info_keys() -> None:
    info = machine_info()
    for key in ("hostname", "platform", "python", "torch", "cpu_model", "logical_cores",
                "torch_threads", "total_ram_bytes", "cuda_device", "energy"):
        assert key in info, key
    assert info["logical_cores"] >= 1 and info["torch"] == torch.__version__
    assert {"backend", "method", "reason"} <= set(info["energy"])


def test_git_info_keys_and_non_repo(tmp_path: Path) -> None:
    info = git_info()
    assert set(info) == {"commit", "dirty"}
    assert info["commit"] is None or len(info["commit"]) == 40
    assert git_info(tmp_path) == {"commit": None, "dirty": None}


@pytest.mark.skipif(not meters.CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs")
def test_second_phase_delta_not_hidden_by_reused_heap() -> None:
    """Freed small blocks stay in the heap (and in RSS); a later phase reusing them must still
    show its allocation, or a rule run after bp in the same process reads as using 0 MB."""
    if not meters.heap_trim_available():
        pytest.skip("allocator has no malloc_trim (not glibc)")

    def churn() -> list[torch.Tensor]:
        return [torch.ones(4096) for _ in range(8000)]  # 16 KiB blocks: heap, not mmap; ~128 MB

    first = churn()
    del first
    with MemoryMeter() as phase:
        second = churn()
        del second
    assert phase.delta_bytes is not None and phase.delta_bytes >= 64 * MB, phase.delta_bytes
