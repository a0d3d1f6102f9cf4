"""The pieces behind the router's metrics and dashboard, without processes: histogram quantiles like PromQL's, rates
from scraped samples (restarts never give negative rates), the metrics settings in the config, and the small HTTP
layer's limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import MappingProxyType

import pytest

from shard_router import ConfigError, load
from shard_router.dashboard.http import MAX_BODY_BYTES, HttpServer, Request, Response
from shard_router.dashboard.shard_stats import Sample, ShardStats, parse, quantile
from shard_router.metrics import RouterMetrics

from .conftest import write_shards


def test_quantile_interpolates_within_the_bucket_like_promql() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # beyond the last bound: "at least"


def _sample(at_s: float, started: float, succeeded: float, shards: frozenset[str] = frozenset({"a"})) -> Sample:
    values = {
        ("saga_started_total", ()): started,
        ("saga_completed_total", (("outcome", "succeeded"),)): succeeded,
    }
    return Sample(at_s, MappingProxyType(values), shards)


def test_throughput_from_samples_skips_restarts_and_changed_shard_sets() -> None:
    stats = ShardStats(lambda: None, history_s=600)  # type: ignore[arg-type,return-value]
    stats.samples.extend(
        [
            _sample(100, 0, 0),
            _sample(102, 20, 10),
            _sample(104, 5, 2),  # a shard restarted: its counters began again
            _sample(106, 15, 12, frozenset({"a", "b"})),  # a shard joined: no rate across the change
            _sample(108, 25, 22, frozenset({"a", "b"})),
        ]
    )
    points = stats.throughput()
    assert [(p["t"], p["started"], p["succeeded"]) for p in points] == [(102, 10, 5), (104, 0, 0), (108, 5, 5)]


def test_parse_keeps_only_what_the_dashboard_shows() -> None:
    text = (
        "# TYPE saga_started_total counter\nsaga_started_total 3.0\n"
        "# TYPE saga_journal_wal_bytes gauge\nsaga_journal_wal_bytes 4096\n"
        '# TYPE saga_step_retries_total counter\nsaga_step_retries_total{step="a",action="forward",code="X"} 2\n'
    )
    assert parse(text) == {
        ("saga_started_total", ()): 3.0,
        ("saga_journal_wal_bytes", ()): 4096.0,  # kept per shard (ShardStats' journal view), never summed
        ("saga_step_retries_total", (("action", "forward"), ("code", "X"), ("step", "a"))): 2.0,
    }


def test_a_shards_journal_view_is_its_own() -> None:
    from shard_router.dashboard.shard_stats import journal_figures

    text = (
        "saga_journal_file_bytes 8192\nsaga_journal_wal_bytes 4096\n"
        'saga_journal_rows{table="sagas"} 12\nsaga_journal_oldest_row_age_seconds{table="sagas"} 30.5\n'
    )
    assert journal_figures(parse(text)) == {
        "file_bytes": 8192.0,
        "wal_bytes": 4096.0,
        "rows.sagas": 12.0,
        "oldest_age_s.sagas": 30.5,
    }


def test_metrics_settings_are_validated_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "shards.toml"
    write_shards(path, [("s1", "127.0.0.1:1")])
    config = load(path, metrics_listen="127.0.0.1:9", dashboard_listen="127.0.0.1:8", env={})
    assert (config.metrics_listen, config.dashboard_listen) == ("127.0.0.1:9", "127.0.0.1:8")
    assert load(path, env={"SAGA_ROUTER_METRICS_LISTEN": "127.0.0.1:7"}).metrics_listen == "127.0.0.1:7"
    with pytest.raises(ConfigError, match="dashboard_listen"):
        load(path, dashboard_listen="nope", env={})
    path.write_text('[[shards]]\nid = "s1"\naddress = "127.0.0.1:1"\nmetrics = "nope"\n')
    with pytest.raises(ConfigError, match=r"shards\[0\]\.metrics"):
        load(path, env={})


def test_shard_up_series_of_a_removed_shard_disappear() -> None:
    m = RouterMetrics()
    m.shards_checked({"a": True, "b": False})
    m.shards_checked({"a": True})
    samples = {(s.name, tuple(s.labels.values())): s.value for f in m.registry.collect() for s in f.samples}
    assert samples[("saga_router_shard_up", ("a",))] == 1 and ("saga_router_shard_up", ("b",)) not in samples
    assert samples[("saga_router_shards_up", ())] == 1


async def test_http_layer_refuses_oversized_and_malformed_requests() -> None:
    async def handler(req: Request) -> Response:
        return Response.of_json({"path": req.path, "query": req.query})

    server = HttpServer(handler)
    port = await server.start("127.0.0.1:0")

    async def send(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    try:
        ok = await send(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and b'"path":"/a b"' in ok and b'"x":"1"' in ok
        big = f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        assert (await send(big)).startswith(b"HTTP/1.1 413")
        assert (await send(b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await send(b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 20_000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
    finally:
        await server.close()


async def test_samples_sum_counters_but_take_the_oldest_age_across_shards() -> None:
    pages = {
        "a": "saga_started_total 3.0\nsaga_oldest_in_flight_age_seconds 12.5\n",
        "b": "saga_started_total 4.0\nsaga_oldest_in_flight_age_seconds 30.0\n",
    }
    servers = []

    async def serve(text: str) -> str:
        async def handler(req: Request) -> Response:
            return Response(200, text.encode(), "text/plain")

        server = HttpServer(handler)
        servers.append(server)
        return f"127.0.0.1:{await server.start('127.0.0.1:0')}"

    addresses = {sid: await serve(text) for sid, text in pages.items()}

    class Topo:
        metrics = addresses

    try:
        stats = ShardStats(lambda: Topo, history_s=60)  # type: ignore[arg-type,return-value]
        sample = await stats.sample_once()
        assert sample.shards == {"a", "b"}
        assert stats.now()["started_total"] == 7 and stats.now()["oldest_in_flight_age_seconds"] == 30
    finally:
        for server in servers:
            await server.close()
