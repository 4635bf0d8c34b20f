"""Measuring a run: resident memory of a whole process tree over time, and machine facts.

:class:`TreeMemorySampler` samples, in a background thread, the summed resident set size (RSS)
of a root process and all its descendants (with a local Ray started by the driver: the raylet,
GCS, dashboard and every worker/actor process), plus any extra numeric probes (e.g. Ray object
store bytes), and keeps the peak and the time series. Summed RSS counts pages shared between
processes (libraries, the object store's shared memory) once per process, so it over-states the
physical memory in use; it is the conservative figure.
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

Probe = Callable[[], float]


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """Summed RSS of ``root`` and all its live descendants.

    Args:
        root: The root process.

    Returns:
        ``(bytes, processes)``: summed resident set size in bytes and the number of processes
        counted (processes that exit while being read are skipped).
    """
    total, count = 0, 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total, count


@dataclass
class MemorySeries:
    """What a :class:`TreeMemorySampler` recorded.

    Attributes:
        t: Sample times, seconds since the sampler started.
        rss: Summed tree RSS at each sample, bytes.
        processes: Processes counted at each sample.
        probes: Per probe name, its value at each sample (``nan`` where the probe failed).
    """

    t: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    probes: dict[str, list[float]] = field(default_factory=dict)

    @property
    def peak_rss(self) -> int:
        """Largest summed RSS seen, bytes (0 before the first sample)."""
        return max(self.rss, default=0)

    def peak(self, probe: str) -> float:
        """Largest finite value of one probe (``nan`` when it never succeeded)."""
        values = [v for v in self.probes.get(probe, []) if not math.isnan(v)]
        return max(values, default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy with the peaks."""
        return {"t": self.t, "rss": self.rss, "processes": self.processes, "probes": self.probes,
                "peak_rss": self.peak_rss, "peaks": {k: self.peak(k) for k in self.probes}}


class TreeMemorySampler:
    """Background sampler of a process tree's summed RSS (a context manager).

    Args:
        pid: Root process id (default: this process).
        interval_s: Seconds between samples.
        probes: Extra ``name -> callable`` sampled at every tick (return a float; an exception
            records ``nan``), e.g. the Ray object store's used bytes.

    Example::

        with TreeMemorySampler(interval_s=0.5) as sampler:
            run_the_stage()
        print(sampler.series.peak_rss)
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.5,
                 probes: dict[str, Probe] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.root = psutil.Process(os.getpid() if pid is None else pid)
        self.interval_s = interval_s
        self.probe_fns = dict(probes or {})
        self.series = MemorySeries(probes={name: [] for name in self.probe_fns})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def sample(self) -> None:
        """Take one sample now."""
        rss, count = tree_rss(self.root)
        self.series.t.append(round(time.perf_counter() - self._start, 3))
        self.series.rss.append(rss)
        self.series.processes.append(count)
        for name, fn in self.probe_fns.items():
            try:
                value = float(fn())
            except Exception:  # a probe (e.g. an RPC) failing must not stop the sampling
                value = float("nan")
            self.series.probes[name].append(value)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeMemorySampler:
        self._start = time.perf_counter()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def machine_info() -> dict[str, Any]:
    """The facts a benchmark figure must be printed with.

    Returns:
        ``cpus`` (logical, ``os.cpu_count``), ``ram_gib`` (total), ``cpu_model`` (from
        ``/proc/cpuinfo`` where it exists, else :func:`platform.processor`), ``load_avg``
        (1/5/15-minute, where available), ``platform`` and ``python``.
    """
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    return {
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "load_avg": [round(x, 2) for x in load],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
