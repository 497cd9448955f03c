"""Fleet: device registry, MQTT ingest of state/events/telemetry, aggregation, desired state."""

from cloud_hub.fleet.aggregate import SlotAggregate
from cloud_hub.fleet.service import DeviceRecord, FleetService

__all__ = ["DeviceRecord", "FleetService", "SlotAggregate"]
