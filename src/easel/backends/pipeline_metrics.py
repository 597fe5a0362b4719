"""How long this process's ``diffusers`` pipelines took to load and swap, and the bytes each
holds on its device now, as Prometheus series:

- ``easel_pipeline_load_seconds{pipeline, kind}``, a histogram: ``load`` (read from disk and
  put on the device: the first load and every reload of an unloaded pipeline), ``swap_in``
  (CPU memory to the device), ``swap_out`` (off the device: to CPU memory, or freed);
- ``easel_pipeline_resident_bytes{pipeline}``, a gauge: its parameters and buffers on its
  device (0 while parked in CPU memory or unloaded).

``pipeline`` is the family and the weights by name (``z-image:Z-Image-Turbo``, with
``+LoRA`` when one is fused). The figures live where the pipelines do, in the worker's
process. Under ``easel serve --processes N`` the worker process writes them to the
multiprocess directory (``$PROMETHEUS_MULTIPROC_DIR``) that every API process's ``/metrics``
reads, as it does the HTTP series. In a one-process ``easel serve`` the API's ``/metrics``
adds :func:`collectors` (this process's). A worker started alone (``easel worker``) keeps
them in its own process and serves them at ``/metrics`` on its health port
(:mod:`easel.worker.health`).
"""

from __future__ import annotations

import os
import threading

from prometheus_client import Gauge, Histogram
from prometheus_client.registry import Collector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name (easel.supervise)
BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class PipelineMetrics:
    """The two series; in the multiprocess directory when ``$PROMETHEUS_MULTIPROC_DIR`` is
    set as they are made (a supervised worker), else in this process's memory."""

    def __init__(self) -> None:
        self.shared = MULTIPROCESS_ENV in os.environ
        self.seconds = Histogram(
            "easel_pipeline_load_seconds",
            "Seconds a diffusers pipeline took to load (from disk onto its device), swap in "
            "(CPU memory to its device) or swap out (off its device), by pipeline and kind.",
            ["pipeline", "kind"],
            buckets=BUCKETS_S,
            registry=None,
        )
        self.resident = Gauge(
            "easel_pipeline_resident_bytes",
            "Bytes of a diffusers pipeline's parameters and buffers on its device now "
            "(0: parked in CPU memory or unloaded).",
            ["pipeline"],
            multiprocess_mode="mostrecent",
            registry=None,
        )

    def observe(self, pipeline: str, kind: str, seconds: float) -> None:
        self.seconds.labels(pipeline, kind).observe(seconds)

    def set_resident(self, pipeline: str, size: int) -> None:
        self.resident.labels(pipeline).set(size)


_made: PipelineMetrics | None = None
_lock = threading.Lock()


def metrics() -> PipelineMetrics:
    """The process's one :class:`PipelineMetrics`, made on first use."""
    global _made
    with _lock:
        if _made is None:
            _made = PipelineMetrics()
        return _made


def collectors() -> list[Collector]:
    """The series a scrape of this process adds; none when they are written to the
    multiprocess directory (the scrape's multiprocess collector reads them there)."""
    made = metrics()
    return [] if made.shared else [made.seconds, made.resident]
