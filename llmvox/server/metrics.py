"""Prometheus metrics: one registry per app (so several apps can live in one process, e.g. tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from llmvox.engine.engine import SpeechEngine
    from llmvox.engine.playout import PlayoutClock

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # no `*_created` series: they double the output and nobody graphs them

_TTFA_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
_GAP_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
_STALL_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self, active: Callable[[], float], queued: Callable[[], float],
                 engine: Callable[[], SpeechEngine | None]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("llmvox_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("llmvox_errors", "Failed or aborted requests, by endpoint and kind",
                              ["endpoint", "kind"], registry=r)
        self.ttfa = Histogram("llmvox_time_to_first_audio_seconds", "Request start to first audio chunk",
                              ["endpoint"], buckets=_TTFA_BUCKETS, registry=r)
        self.rtf = Histogram("llmvox_real_time_factor", "Generation time / audio duration per stream",
                             ["endpoint"], buckets=_RTF_BUCKETS, registry=r)
        self.audio_seconds = Counter("llmvox_audio_seconds", "Seconds of audio streamed", ["endpoint"], registry=r)
        # playback as the server sends it: a gap is a chunk sent after the audio sent before it (played
        # from the first chunk on) has run out; per stream, so p50/p95 come from the buckets
        self.gaps = Histogram("llmvox_stream_playback_gaps", "Playback gaps per finished stream",
                              ["endpoint"], buckets=_GAP_BUCKETS, registry=r)
        self.stall = Histogram("llmvox_stream_stall_seconds", "Seconds playback waited per finished stream",
                               ["endpoint"], buckets=_STALL_BUCKETS, registry=r)
        self.disconnects = Counter("llmvox_client_disconnects", "Streams cancelled because the client left",
                                   ["endpoint"], registry=r)
        g = Gauge("llmvox_active_streams", "Streams being served now", registry=r)
        g.set_function(active)
        q = Gauge("llmvox_queue_depth", "Requests waiting for a free stream", registry=r)
        q.set_function(queued)
        r.register(_EngineCollector(engine))

    def observe_playout(self, endpoint: str, clock: PlayoutClock) -> None:
        """One finished stream's gaps and stalled seconds (the histograms' sums are the totals)."""
        self.gaps.labels(endpoint).observe(clock.gaps)
        self.stall.labels(endpoint).observe(clock.stall)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Per-worker state read from the engine at scrape time."""

    def __init__(self, engine: Callable[[], SpeechEngine | None]):
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        active = GaugeMetricFamily("llmvox_worker_active_segments", "Segments in a decoder batch", labels=["worker"])
        queued = GaugeMetricFamily("llmvox_worker_queued_segments", "Segments waiting for a batch row",
                                   labels=["worker"])
        codec_q = GaugeMetricFamily("llmvox_worker_codec_queue", "Audio chunks waiting for the codec",
                                    labels=["worker"])
        steps = CounterMetricFamily("llmvox_decoder_steps", "Batched decoder steps", labels=["worker"])
        tokens = CounterMetricFamily("llmvox_decoder_tokens", "Stream-steps decoded (codes)", labels=["worker"])
        streams = GaugeMetricFamily("llmvox_engine_streams", "Streams open in the engine")
        if engine is not None:
            stats = engine.stats()
            streams.add_metric([], stats["streams"])
            for w in stats["workers"]:
                active.add_metric([w["name"]], w["active_segments"])
                queued.add_metric([w["name"]], w["queued_segments"])
                codec_q.add_metric([w["name"]], w["codec_queue"])
                steps.add_metric([w["name"]], w["steps"])
                tokens.add_metric([w["name"]], w["tokens"])
        yield from (active, queued, codec_q, steps, tokens, streams)
