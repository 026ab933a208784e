"""Meters: wall time, peak memory, energy and FLOPs, measured honestly.

Every meter reports a :class:`Measurement` that carries its unit and the *method* that produced
it, because a number without its method cannot be compared: a RAPL joule and a TDP-estimate joule
are different quantities. A meter that cannot measure reports ``value=None`` plus a ``reason``;
it never reports 0 for "unavailable", since 0 would silently win every comparison.

Typical use inside a training loop::

    timer, mem = Timer(device), MemoryMeter(device)
    for epoch in range(epochs):
        with mem, EnergyMeter(device) as energy:     # one window per training phase
            timer.start(); train_one_epoch(); timer.stop()
        evaluate()                                    # off the clock, outside the windows
    timer.laps        # per-epoch training seconds; timer.elapsed_s is their sum
    mem.result        # Measurement of the last window; mem.peak_bytes / delta_bytes too
"""
from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Paths are module constants so tests (and unusual systems) can point them elsewhere.
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RAPL_ROOT = Path("/sys/class/powercap")
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")

GIT_TIMEOUT_S = 5.0


@dataclass
class Measurement:
    """One reading of a meter.

    ``value`` is None exactly when the meter could not measure; ``reason`` then says why.
    ``method`` names how the value was obtained ("perf_counter", "vmhwm", "cuda-allocator",
    "nvml", "rapl", "estimate-tdp", "flop-counter", ...); estimates always start with
    "estimate". ``detail`` holds the inputs of the number (baseline, busy fraction, ...) so a
    reader can recompute or question it.
    """

    value: float | None
    unit: str
    method: str
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def is_estimate(self) -> bool:
        return self.method.startswith("estimate")


@dataclass
class MemoryMeasurement(Measurement):
    """A MemoryMeter reading: ``value == peak_bytes`` (absolute peak in the window), plus the
    usage at start (``baseline_bytes``) and what the window added (``delta_bytes``)."""

    baseline_bytes: int | None = None
    peak_bytes: int | None = None
    delta_bytes: int | None = None


# --------------------------------------------------------------------------------------------
# device helpers


def _as_device(device: Any) -> torch.device | None:
    """Normalise what callers pass as a device; an int means a CUDA index (torch's convention)."""
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def _is_cuda(device: torch.device | None) -> bool:
    return device is not None and device.type == "cuda" and torch.cuda.is_available()


def sync(device: Any) -> None:
    """Wait for queued device work, so a clock read measures finished work, not kernel launches.

    No-op on CPU (its ops are synchronous).
    """
    dev = _as_device(device)
    if _is_cuda(dev):
        torch.cuda.synchronize(dev)
    elif dev is not None and dev.type == "mps" and torch.backends.mps.is_available():
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------------
# time


class Timer:
    """Accumulating wall-clock timer; each start()/stop() pair is one lap.

    The device is synchronised before *every* clock read: without that, CUDA timings measure
    how fast Python enqueues kernels. Stop the timer around evaluation to keep it off the clock.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = _as_device(device)
        self.laps: list[float] = []
        self.elapsed_s: float = 0.0
        self._t0: float | None = None

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self) -> Timer:
        if self._t0 is not None:
            raise RuntimeError("Timer.start() called while already running")
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> float:
        """End the current lap and return its seconds (never negative)."""
        if self._t0 is None:
            raise RuntimeError("Timer.stop() called without start()")
        sync(self.device)
        lap = max(0.0, time.perf_counter() - self._t0)  # perf_counter is monotonic; belt and braces
        self._t0 = None
        self.laps.append(lap)
        self.elapsed_s += lap
        return lap

    def reset(self) -> None:
        self.laps.clear()
        self.elapsed_s = 0.0
        self._t0 = None

    def measurement(self) -> Measurement:
        return Measurement(self.elapsed_s, "s", "perf_counter", detail={"laps": len(self.laps)})

    def __enter__(self) -> Timer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# memory


def _read_kb_field(path: Path, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes; None when absent (not Linux)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _read_status_bytes(key: str) -> int | None:
    """VmHWM / VmRSS of this process in bytes."""
    return _read_kb_field(PROC_STATUS, key)


def _reset_hwm() -> str | None:
    """Reset VmHWM to the current RSS (Linux >= 4.0). Returns None on success, else why not."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError as e:
        return f"cannot write {CLEAR_REFS}: {e.strerror or e}"
    return None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where glibc is not the allocator."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``) before a CPU baseline is read.

    Without it, memory an earlier phase (or an earlier run in the same process) freed stays in
    RSS, later allocations reuse it, and the next window's ``delta_bytes`` reads as ~0 although
    the phase did allocate. No-op where glibc is not the allocator.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def heap_trim_available() -> bool:
    """Whether CPU memory baselines are taken after ``malloc_trim`` (see ``_release_free_heap``)."""
    return _malloc_trim() is not None


def _ru_maxrss_bytes() -> int:
    """Process-lifetime peak RSS; kB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# Peak counters are process-global (VmHWM) or per device (CUDA): a meter that resets them would
# erase the peak an enclosing meter is tracking. Before any reset we fold the current peak into
# every active meter sharing that counter, so nested meters stay correct.
_ACTIVE: list[MemoryMeter] = []
_ACTIVE_LOCK = threading.Lock()


def _counter_key(device: torch.device | None) -> str:
    if not _is_cuda(device):
        return "cpu"
    assert device is not None
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _current_peak(device: torch.device | None) -> int | None:
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device)
    return _read_status_bytes("VmHWM")


def _carry_peak_to_active(device: torch.device | None) -> None:
    peak = _current_peak(device)
    if peak is None:
        return
    key = _counter_key(device)
    for meter in _ACTIVE:
        if _counter_key(meter.device) == key:
            meter._carried_peak = max(meter._carried_peak, peak)


class _RssSampler:
    """Fallback when VmHWM cannot be reset: poll VmRSS in a thread and keep the maximum.

    Can miss spikes shorter than the interval, which is why its method is labelled separately.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.max_bytes = _read_status_bytes("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bpfree-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        rss = _read_status_bytes("VmRSS")
        if rss is not None and rss > self.max_bytes:
            self.max_bytes = rss

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.max_bytes


class MemoryMeter:
    """Peak memory of one window (a phase), e.g. training only.

    ``stop()`` returns a MemoryMeasurement whose value is the *absolute* peak in bytes during the window
    (``peak_bytes``): process RSS on CPU, allocator bytes on CUDA (like ``max_memory_allocated``,
    so it includes model weights already resident). ``baseline_bytes`` is the usage at start and
    ``delta_bytes = peak_bytes - baseline_bytes`` is what the phase itself added.

    Methods, best first:
      * "cuda-allocator": ``reset_peak_memory_stats`` + ``max_memory_allocated``.
      * "vmhwm": write 5 to /proc/self/clear_refs (resets VmHWM), read VmHWM at stop. Exact.
      * when clear_refs is not writable: "vmhwm-grew" if VmHWM rose during the window (then it
        is exactly the window's peak), otherwise "vmrss-sampled" (VmRSS polled every
        ``sample_interval_s``; may miss short spikes).
      * "ru_maxrss-lifetime" without /proc (macOS): the process-lifetime peak.

    Meters may be nested; an inner reset does not lose the outer meter's peak.
    """

    def __init__(self, device: Any = None, *, sample_interval_s: float = 0.01) -> None:
        self.device = _as_device(device)
        self.sample_interval_s = sample_interval_s
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.delta_bytes: int | None = None
        self.result: MemoryMeasurement | None = None
        self._carried_peak = 0
        self._mode: str | None = None
        self._hwm_at_start: int | None = None
        self._sampler: _RssSampler | None = None
        self._reason: str | None = None

    def start(self) -> MemoryMeter:
        if self._mode is not None:
            raise RuntimeError("MemoryMeter.start() called while already running")
        self.baseline_bytes = self.peak_bytes = self.delta_bytes = None
        self.result, self._carried_peak, self._reason = None, 0, None
        with _ACTIVE_LOCK:
            self._mode = self._start_counter()
            _ACTIVE.append(self)
        return self

    def _start_counter(self) -> str:
        if _is_cuda(self.device):
            sync(self.device)
            _carry_peak_to_active(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return "cuda-allocator"
        rss = _read_status_bytes("VmRSS")
        if rss is None:
            return "ru_maxrss-lifetime"
        _carry_peak_to_active(None)
        _release_free_heap()
        self._reason = _reset_hwm()
        self.baseline_bytes = _read_status_bytes("VmRSS")
        if self._reason is None:
            return "vmhwm"
        self._hwm_at_start = _read_status_bytes("VmHWM")
        self._sampler = _RssSampler(self.sample_interval_s)
        return "vmhwm-fallback"

    def stop(self) -> MemoryMeasurement:
        if self._mode is None:
            raise RuntimeError("MemoryMeter.stop() called without start()")
        with _ACTIVE_LOCK:
            _ACTIVE.remove(self)
            method, peak = self._read_peak(self._mode)
            self._mode = None
        self.peak_bytes = max(peak, self._carried_peak) if peak is not None else None
        if self.peak_bytes is not None and self.baseline_bytes is not None:
            self.delta_bytes = max(0, self.peak_bytes - self.baseline_bytes)
        detail = {"fallback_reason": self._reason} if self._reason is not None else {}
        reason = None if self.peak_bytes is not None else "no memory counter readable"
        self.result = MemoryMeasurement(
            self.peak_bytes, "bytes", method, reason, detail,
            baseline_bytes=self.baseline_bytes, peak_bytes=self.peak_bytes, delta_bytes=self.delta_bytes,
        )
        return self.result

    def _read_peak(self, mode: str) -> tuple[str, int | None]:
        if mode == "cuda-allocator":
            sync(self.device)
            return mode, torch.cuda.max_memory_allocated(self.device)
        if mode == "vmhwm":
            return mode, _read_status_bytes("VmHWM")
        if mode == "ru_maxrss-lifetime":
            return mode, _ru_maxrss_bytes()
        assert self._sampler is not None
        sampled = self._sampler.close()
        self._sampler = None
        hwm = _read_status_bytes("VmHWM")
        if hwm is not None and self._hwm_at_start is not None and hwm > self._hwm_at_start:
            return "vmhwm-grew", hwm
        return "vmrss-sampled", sampled

    def __enter__(self) -> MemoryMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# energy

# Fallback CPU power model, in watts per logical CPU at full load. Deliberately round and on the
# high side (a 15 W 4-core laptop part is ~4 W/CPU, a 280 W 128-thread EPYC ~2 W/CPU): the
# estimate is proportional to process CPU time anyway, so ratios between rules are what it is
# good for, never absolute joules. Override with EnergyMeter(watts_per_cpu=...).
DEFAULT_WATTS_PER_CPU = 15.0

# Known parts: (regex on /proc/cpuinfo "model name", watts per logical CPU = TDP / threads).
CPU_WATTS_TABLE: tuple[tuple[str, float], ...] = (
    (r"EPYC 7763\b", 280.0 / 128),  # AMD EPYC 7763: 280 W, 64C/128T
    (r"Platinum 8375C\b", 300.0 / 64),  # Intel Xeon Platinum 8375C: 300 W, 32C/64T
    (r"i7-1165G7\b", 28.0 / 8),  # Intel Core i7-1165G7: 28 W (cTDP up), 4C/8T
)


def cpu_model() -> str | None:
    try:
        text = CPUINFO.read_text()
    except OSError:
        return platform.processor() or None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or None)


def watts_per_cpu(model: str | None = None) -> tuple[float, str]:
    """Watts per logical CPU for the TDP estimate, and where that number came from."""
    model = cpu_model() if model is None else model
    for pattern, watts in CPU_WATTS_TABLE:
        if model and re.search(pattern, model):
            return watts, f"table entry {pattern!r}"
    return DEFAULT_WATTS_PER_CPU, "default DEFAULT_WATTS_PER_CPU"


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), which bounds its busy fraction."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def estimate_tdp_energy(cpu_s: float, wall_s: float, cpus: int, watts_per_cpu: float) -> float:
    """TDP × busy fraction × wall time, where TDP = watts_per_cpu × cpus and
    busy = process CPU time / (wall × cpus), clamped to [0, 1]. Equals watts_per_cpu × cpu_s
    unless the clamp bites."""
    if wall_s <= 0:
        return 0.0
    busy = min(1.0, max(0.0, cpu_s / (wall_s * cpus)))
    return watts_per_cpu * cpus * busy * wall_s


def _rapl_zones() -> list[Path]:
    """Top-level RAPL package zones (intel-rapl:N; sub-zones intel-rapl:N:M are inside them)."""
    if not RAPL_ROOT.is_dir():
        return []
    return sorted(p for p in RAPL_ROOT.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", p.name))


def _rapl_status() -> tuple[list[Path], str | None]:
    zones = _rapl_zones()
    if not zones:
        return [], f"no RAPL zones under {RAPL_ROOT}"
    for zone in zones:
        try:
            int((zone / "energy_uj").read_text())
        except (OSError, ValueError) as e:
            return [], f"cannot read {zone / 'energy_uj'}: {e}"
    return zones, None


def _nvml_status() -> str | None:
    if importlib.util.find_spec("pynvml") is None:
        return "pynvml not installed (pip install nvidia-ml-py)"
    return None


def _codecarbon_status() -> str | None:
    if importlib.util.find_spec("codecarbon") is None:
        return "codecarbon not installed"
    return None


class _Backend:
    """One energy source. begin() opens the window, end() closes it and returns joules."""

    def begin(self) -> None:
        raise NotImplementedError

    def end(self) -> Measurement:
        raise NotImplementedError


class _Unavailable(_Backend):
    def __init__(self, method: str, reason: str) -> None:
        self.method, self.reason = method, reason

    def begin(self) -> None:
        pass

    def end(self) -> Measurement:
        return Measurement(None, "J", self.method, self.reason)


class _NvmlBackend(_Backend):
    """GPU energy counter since driver load (mJ, Volta+); measures the whole GPU, not the process."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._e0: int | None = None
        self._handle: Any = None
        self._error: str | None = None

    def begin(self) -> None:
        import pynvml

        try:
            pynvml.nvmlInit()
            self._handle = self._get_handle(pynvml)
            self._e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError as e:
            self._error = f"NVML: {e}"

    def _get_handle(self, pynvml: Any) -> Any:
        """Match by UUID: NVML indices ignore CUDA_VISIBLE_DEVICES, torch's do not."""
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def end(self) -> Measurement:
        import pynvml

        if self._error is not None or self._e0 is None:
            return Measurement(None, "J", "nvml", self._error or "NVML window not started")
        sync(self.device)
        try:
            e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError as e:
            return Measurement(None, "J", "nvml", f"NVML: {e}")
        return Measurement((e1 - self._e0) / 1000.0, "J", "nvml", detail={"scope": "whole GPU"})


class _RaplBackend(_Backend):
    """CPU package energy from powercap sysfs (µJ). Whole package(s), not just this process.

    One counter wraparound per window is corrected via max_energy_range_uj; a window long enough
    to wrap twice (hours at high power) cannot be detected, so meter per epoch and sum.
    """

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self._e0: list[int] = []

    def begin(self) -> None:
        self._e0 = [int((z / "energy_uj").read_text()) for z in self.zones]

    def end(self) -> Measurement:
        total_uj = 0
        for zone, e0 in zip(self.zones, self._e0):
            try:
                e1 = int((zone / "energy_uj").read_text())
                delta = e1 - e0
                if delta < 0:
                    delta += int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as e:
                return Measurement(None, "J", "rapl", f"cannot read {zone}: {e}")
            total_uj += delta
        return Measurement(total_uj / 1e6, "J", "rapl", detail={"zones": [z.name for z in self.zones]})


class _CodeCarbonBackend(_Backend):
    """CodeCarbon's *offline* tracker (the online one contacts outside hosts): an estimate, so
    labelled "estimate-codecarbon". A tracker cannot be restarted, hence one per window.
    tracking_mode="process" (newer CodeCarbon) attributes only this process's share of the
    machine; older versions lack it and measure the whole machine, which ``detail`` records."""

    def __init__(self, country_iso_code: str = "USA") -> None:
        # The country only changes CO2, not the energy we read, but offline mode requires one.
        self.country_iso_code = country_iso_code
        self._tracker: Any = None
        self._scope = "process"

    def begin(self) -> None:
        from codecarbon import OfflineEmissionsTracker

        kwargs = dict(country_iso_code=self.country_iso_code, save_to_file=False, log_level="error")
        try:
            self._tracker = OfflineEmissionsTracker(tracking_mode="process", **kwargs)
        except TypeError:  # CodeCarbon without tracking_mode
            self._tracker, self._scope = OfflineEmissionsTracker(**kwargs), "machine"
        self._tracker.start()

    def end(self) -> Measurement:
        self._tracker.stop()
        data = getattr(self._tracker, "final_emissions_data", None)
        kwh = getattr(data, "energy_consumed", None)
        if kwh is None:
            return Measurement(None, "J", "estimate-codecarbon", "codecarbon reported no energy")
        return Measurement(float(kwh) * 3.6e6, "J", "estimate-codecarbon", detail={"scope": self._scope})


class _TdpBackend(_Backend):
    """bpfree's own estimate from process CPU time (all threads; not child processes)."""

    def __init__(self, watts: float | None = None) -> None:
        if watts is None:
            self.watts, self.source = watts_per_cpu()
        else:
            self.watts, self.source = watts, "EnergyMeter(watts_per_cpu=...)"
        self.cpus = usable_cpus()
        self._t0 = self._c0 = 0.0

    def begin(self) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def end(self) -> Measurement:
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._c0
        energy = estimate_tdp_energy(cpu, wall, self.cpus, self.watts)
        detail = {
            "watts_per_cpu": self.watts, "watts_source": self.source, "cpus": self.cpus,
            "cpu_time_s": cpu, "wall_s": wall, "busy_fraction": cpu / (wall * self.cpus) if wall > 0 else None,
        }
        if energy <= 0:  # never report 0 for a window we could not resolve
            return Measurement(None, "J", "estimate-tdp", "process CPU time did not advance in the window", detail)
        return Measurement(energy, "J", "estimate-tdp", detail=detail)


ENERGY_BACKENDS = ("auto", "nvml", "rapl", "codecarbon", "tdp")


def energy_capability(device: Any = None) -> dict[str, str | None]:
    """Which backend EnergyMeter(device) would use, and why the better ones were not used."""
    dev = _as_device(device)
    if dev is not None and dev.type == "cuda":
        if not torch.cuda.is_available():
            return {"backend": None, "method": "nvml", "reason": "CUDA not available"}
        why = _nvml_status()
        if why is None:
            return {"backend": "nvml", "method": "nvml", "reason": "NVML total-energy counter"}
        return {"backend": None, "method": "nvml", "reason": why}
    zones, rapl_why = _rapl_status()
    if not rapl_why:
        return {"backend": "rapl", "method": "rapl", "reason": f"RAPL zones {[z.name for z in zones]}"}
    cc_why = _codecarbon_status()
    if cc_why is None:
        return {"backend": "codecarbon", "method": "estimate-codecarbon", "reason": f"{rapl_why}; using CodeCarbon offline"}
    watts, source = watts_per_cpu()
    return {
        "backend": "tdp", "method": "estimate-tdp",
        "reason": f"{rapl_why}; {cc_why}; estimate {watts:g} W per CPU ({source}) × process CPU time",
    }


def _make_backend(backend: str, device: torch.device | None, watts: float | None) -> _Backend:
    if backend == "auto":
        cap = energy_capability(device)
        if cap["backend"] is None:
            return _Unavailable(cap["method"] or "none", cap["reason"] or "unavailable")
        backend = cap["backend"]
    if backend == "nvml":
        why = "device is not an available CUDA device" if not _is_cuda(device) else _nvml_status()
        return _Unavailable("nvml", why) if why else _NvmlBackend(device)  # type: ignore[arg-type]
    if backend == "rapl":
        zones, why = _rapl_status()
        return _Unavailable("rapl", why) if why else _RaplBackend(zones)
    if backend == "codecarbon":
        why = _codecarbon_status()
        return _Unavailable("estimate-codecarbon", why) if why else _CodeCarbonBackend()
    return _TdpBackend(watts)


class EnergyMeter:
    """Energy of one begin/end window, in joules.

    backend="auto" picks: CUDA device -> NVML (else None + reason; a CPU estimate would omit
    the GPU); CPU -> RAPL if readable, else CodeCarbon offline if installed, else "estimate-tdp".
    Estimates always have a method starting with "estimate". Use the same backend for every rule
    you compare (pass ``backend=`` to pin it).
    """

    def __init__(self, device: Any = None, *, backend: str = "auto", watts_per_cpu: float | None = None) -> None:
        if backend not in ENERGY_BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {ENERGY_BACKENDS}")
        if watts_per_cpu is not None and not watts_per_cpu > 0:
            raise ValueError(f"watts_per_cpu={watts_per_cpu!r}: must be > 0")
        self.device = _as_device(device)
        self.backend = backend
        self.watts_per_cpu = watts_per_cpu
        self.result: Measurement | None = None
        self._active: _Backend | None = None

    def start(self) -> EnergyMeter:
        if self._active is not None:
            raise RuntimeError("EnergyMeter.start() called while already running")
        self.result = None
        sync(self.device)
        self._active = _make_backend(self.backend, self.device, self.watts_per_cpu)
        self._active.begin()
        return self

    def stop(self) -> Measurement:
        if self._active is None:
            raise RuntimeError("EnergyMeter.stop() called without start()")
        sync(self.device)
        self.result, self._active = self._active.end(), None
        return self.result

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# FLOPs


class FlopMeter:
    """Counts FLOPs of matmul/conv/attention ops (torch's FlopCounterMode; elementwise ops are
    not counted). Forward and backward are both counted if both run inside the context."""

    def __init__(self) -> None:
        self._mode: FlopCounterMode | None = None

    @property
    def total(self) -> int:
        return int(self._mode.get_total_flops()) if self._mode is not None else 0

    def __enter__(self) -> FlopMeter:
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._mode is not None
        self._mode.__exit__(exc_type, exc, tb)

    def measure(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Measurement:
        """Run ``fn(*args, **kwargs)`` once under the counter and report its FLOPs."""
        with self:
            fn(*args, **kwargs)
        return Measurement(self.total, "flop", "flop-counter")


# --------------------------------------------------------------------------------------------
# provenance


def _total_ram_bytes() -> int | None:
    total = _read_kb_field(MEMINFO, "MemTotal")
    if total is not None:
        return total
    try:  # not Linux
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """Everything needed to tell whether two records are comparable."""
    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "total_ram_bytes": _total_ram_bytes(),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "energy": energy_capability("cuda" if cuda else None),
    }


def _git(args: list[str], cwd: Path) -> str | None:
    """stdout of a git command, or None when git is missing, slow, or cwd is not a repo."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """{"commit": sha | None, "dirty": bool | None} of the repo at ``path``; by default the repo
    holding the bpfree package, else the current directory. "dirty" counts changes to tracked
    files only, so untracked result files do not mark every run dirty."""
    candidates = [Path(path)] if path is not None else [Path(__file__).resolve().parent, Path.cwd()]
    for where in candidates:
        if not where.is_dir() or _git(["rev-parse", "--git-dir"], where) is None:
            continue
        head = _git(["rev-parse", "HEAD"], where)  # None in a repo without commits
        status = _git(["status", "--porcelain", "--untracked-files=no"], where)
        return {
            "commit": head.strip() if head else None,
            "dirty": bool(status.strip()) if status is not None else None,
        }
    return {"commit": None, "dirty": None}
