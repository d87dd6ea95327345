"""/metrics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from typing import Any

from agent.services import Services
from drivers.p1_reader import MeterState

# name, type, help, key in the meter snapshot
_METER_SERIES = (
    ("edge_meter_telegrams_total", "counter", "Valid telegrams read", "telegrams_ok"),
    ("edge_meter_crc_errors_total", "counter", "Telegrams dropped for a bad CRC", "crc_errors"),
    ("edge_meter_parse_errors_total", "counter", "Telegrams dropped as unparsable or truncated", "parse_errors"),
    ("edge_meter_decrypt_errors_total", "counter",
     "Encrypted frames that did not decrypt (wrong key, corrupted frame, failed tag)", "decrypt_errors"),
    ("edge_meter_bytes_read_total", "counter", "Bytes read from the port", "bytes_read"),
    ("edge_meter_bytes_discarded_total", "counter", "Bytes discarded as outside any telegram", "bytes_discarded"),
    ("edge_meter_reconnects_total", "counter", "Times the port was reopened", "reconnects"),
    ("edge_meter_stalls_total", "counter", "Times the port went quiet past the stall timeout", "stalls"),
    ("edge_meter_seconds_since_last_telegram", "gauge", "Seconds since the last valid telegram",
     "seconds_since_last_telegram"),
)
_STATES = (MeterState.CONNECTING, MeterState.READING, MeterState.STALLED, MeterState.DISCONNECTED,
           MeterState.STOPPED)


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def render_metrics(agent: Services) -> str:
    ok, health = agent.health()
    meters = health["meters"]
    lines: list[str] = []
    for name, kind, help_text, key in _METER_SERIES:
        _header(lines, name, kind, help_text)
        for meter_id, snap in meters.items():
            value = snap.get(key)
            if value is not None:
                lines.append(f'{name}{{meter="{_label(meter_id)}"}} {value}')
    _header(lines, "edge_meter_state", "gauge", "1 for the meter's current state")
    for meter_id, snap in meters.items():
        for state in _STATES:
            lines.append(f'edge_meter_state{{meter="{_label(meter_id)}",state="{state}"}} '
                         f'{1 if snap["state"] == state else 0}')
    _header(lines, "edge_readings_in_total", "counter", "Readings accepted by the pipeline")
    lines.append(f"edge_readings_in_total {health['readings_in']}")
    for key, value in sorted(health["storage"].items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            name = f"edge_store_{key}"
            _header(lines, name, "gauge", f"Store: {key.replace('_', ' ')}")
            lines.append(f"{name} {value}")
    _header(lines, "edge_trigger_day_counts_dropped_total", "counter",
            "Noisy levels: trigger windows whose counts came after their UTC day was decided (dropped)")
    lines.append(f"edge_trigger_day_counts_dropped_total {health['triggers']['day_counts_dropped']}")
    _render_faults(lines, health["faults"])
    _render_delivery(lines, agent)
    _header(lines, "edge_healthy", "gauge", "1 when every meter is reading and storage works")
    lines.append(f"edge_healthy {1 if ok else 0}")
    _header(lines, "edge_uptime_seconds", "gauge", "Seconds since the agent started")
    lines.append(f"edge_uptime_seconds {health['uptime_s']}")
    return "\n".join(lines) + "\n"


def _render_faults(lines: list[str], faults: dict[str, Any]) -> None:
    _header(lines, "edge_storage_damage", "gauge",
            "Damaged segments per file kind: files, skipped_bytes, cut_bytes (torn tails), recovered (from the "
            "record's second copy), lost (records beyond repair)")
    for kind, tally in sorted(faults["damage"].items()):
        for what, value in sorted(tally.items()):
            lines.append(f'edge_storage_damage{{kind="{_label(kind)}",what="{what}"}} {value}')
    _header(lines, "edge_storage_fault", "gauge", "1 while a durable write path is broken, per fault")
    delivery = faults["delivery"]
    for name, broken in (("data_directory_lost", faults["data_directory_lost"]),
                         ("release_log_error", faults["release_log_error"]),
                         ("outbox_errors", delivery["outbox_errors"] or delivery["windows_not_queued"]),
                         ("subscriptions_damaged", delivery["damaged"])):
        lines.append(f'edge_storage_fault{{fault="{name}"}} {1 if broken else 0}')


_DELIVERY_SERIES = (
    ("edge_webhook_messages_total", "counter", "Webhook messages acknowledged with a 2xx", "messages_sent"),
    ("edge_webhook_bytes_total", "counter", "Webhook body bytes acknowledged", "bytes_sent"),
    ("edge_webhook_failures_total", "counter", "Webhook attempts that failed", "failures"),
    ("edge_webhook_retries_total", "counter", "Webhook attempts that were retries", "retries"),
    ("edge_webhook_dropped_total", "counter", "Messages dropped from a full outbox (reported as gaps)", "dropped"),
    ("edge_webhook_outbox_depth", "gauge", "Messages waiting in the outbox", "queued"),
    ("edge_webhook_lag_seconds", "gauge", "Age of the oldest undelivered window", "lag_s"),
)


def _render_delivery(lines: list[str], agent: Services) -> None:
    delivery = getattr(agent, "delivery", None)
    if delivery is None:
        return
    states = {sub.id: delivery.describe(sub)["delivery"] for sub in delivery.subscriptions.values()}
    for name, kind, help_text, key in _DELIVERY_SERIES:
        _header(lines, name, kind, help_text)
        for sub_id, state in states.items():
            if state.get(key) is not None:
                lines.append(f'{name}{{subscription="{_label(sub_id)}"}} {state[key]}')
