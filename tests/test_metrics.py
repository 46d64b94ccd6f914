"""``GET /metrics`` of a real ``sipdlg serve`` after a call, parsed with prometheus-client."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import SipdlgProcess, Sipp
from lifecycle_kit import http_get, mi_raw, wait_ended
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.sipp


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_after_a_call(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
) -> None:
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db="none")
    res = sipp("uac_basic", remote=server.sip_address, calls=1, pause_ms=200, timeout=30).run()
    assert res.ok, res.describe()
    wait_ended(server)
    # a parse error, and a retransmitted request (same branch twice)
    opts = (
        f"OPTIONS sip:x@127.0.0.1:{uas.port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKm1\r\n"
        "From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: m1\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in (b"\x00garbage\r\n\r\n", opts.encode(), opts.encode()):
            s.sendto(data, ("127.0.0.1", server.port))
    mi_raw(server, "dlg_list")
    mi_raw(server, "no_such_command")
    mi_raw(server, "dlg_list_ended", {"index": "x", "counter": 1})

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = http_get(server, "/metrics")
        assert status == 200
        return samples(text)

    deadline = time.monotonic() + 5
    m = scrape()
    while m.get(("sipdlg_sip_retransmissions_total", ())) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        m = scrape()
    assert m[("sipdlg_dialogs_processed_total", ())] == 1
    assert m[("sipdlg_dialogs_active", ())] == 0
    assert m[("sipdlg_dialogs_ended_total", (("reason", "Downstream BYE"),))] == 1
    assert m[("sipdlg_sip_requests_total", (("direction", "in"), ("method", "INVITE")))] == 1
    assert m[("sipdlg_sip_requests_total", (("direction", "out"), ("method", "BYE")))] == 1
    assert m[("sipdlg_sip_replies_total", (("class", "2xx"), ("direction", "in")))] >= 2
    assert m[("sipdlg_sip_replies_total", (("class", "2xx"), ("direction", "out")))] >= 2
    assert m[("sipdlg_sip_parse_errors_total", ())] >= 1
    assert m[("sipdlg_sip_retransmissions_total", ())] == 1
    assert m[("sipdlg_mi_requests_total", (("method", "dlg_list"), ("outcome", "ok")))] == 1
    assert m[("sipdlg_mi_requests_total", (("method", "<unknown>"), ("outcome", "not_found")))] == 1
    bad = (("method", "dlg_list_ended"), ("outcome", "bad_params"))
    assert m[("sipdlg_mi_requests_total", bad)] == 1
    assert ("sipdlg_event_loop_lag_seconds", ()) in m
    assert m[("sipdlg_event_loop_lag_samples_seconds_count", ())] >= 1
    assert m[("sipdlg_ended_records", ())] == 1
    # app/gc_policy.py: the watchdog's measure is within what the engine's state explains.
    blocks = m[("sipdlg_memory_allocated_blocks", ())]
    assert 10_000 < blocks <= m[("sipdlg_memory_allocated_blocks_budget", ())]
    assert m[("sipdlg_gc_rescan_freed_objects_total", ())] == 0
    assert m[("sipdlg_event_loop_lag_max_seconds", ())] >= 0
    assert ("sipdlg_gc_pause_seconds_count", ()) in m  # collections happen as load allocates
    assert 0 <= m[("sipdlg_gc_pause_max_seconds", ())] < 5
    assert m[("sipdlg_gc_rescans_total", ())] == 0


def test_metrics_of_the_realtime_store(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
) -> None:
    """The default store: commits made by the writer process, how long messages were held,
    nothing left uncommitted or held once the calls are over."""
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=f"sqlite:///{tmp_path / 'dlg.db'}")
    res = sipp("uac_basic", remote=server.sip_address, calls=5, rate=5, timeout=30).run()
    assert res.ok, res.describe()
    wait_ended(server, 5)
    status, text = http_get(server, "/metrics")
    assert status == 200
    m = samples(text)
    assert m[("sipdlg_db_writer", (("kind", "process"),))] == 1
    assert m[("sipdlg_db_writer", (("kind", "event_loop"),))] == 0
    assert m[("sipdlg_db_commits_total", ())] >= 1
    # per call: the confirmed row, the ACK's state, the delete and the ended-call record
    assert m[("sipdlg_db_rows_written_total", ())] >= 5 * 3
    assert m[("sipdlg_db_commit_seconds_count", ())] == m[("sipdlg_db_commits_total", ())]
    assert m[("sipdlg_db_write_failures_total", ())] == 0
    assert m[("sipdlg_db_uncommitted_dialogs", ())] == 0
    assert m[("sipdlg_db_held_messages", ())] == 0
    assert m[("sipdlg_db_writer_restarts_total", ())] == 0
