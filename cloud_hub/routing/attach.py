"""Wire champion/challenger routing and shadow mirroring into a Hub (one call from ``Hub``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud_hub.hub import Hub


def attach(hub: Hub) -> None:
    """Create ``hub.routing`` / ``hub.shadow`` and hook them into ``hub.inference`` (idempotent)."""
    from cloud_hub.routing.service import RoutingService
    from cloud_hub.shadow.service import ShadowService

    if getattr(hub, "routing", None) is None:
        hub.routing = RoutingService(hub)
    if getattr(hub, "shadow", None) is None:
        hub.shadow = ShadowService(hub)
    inference = getattr(hub, "inference", None)
    if inference is not None:
        inference.set_router(hub.routing)
        if hub.routing.observe not in inference.observers:
            inference.add_observer(hub.routing.observe)
        if hub.routing.observe_error not in inference.error_observers:
            inference.add_error_observer(hub.routing.observe_error)
        if hub.shadow.observe not in inference.observers:
            inference.add_observer(hub.shadow.observe)
