"""Stream inference (see cloud_hub/stream/worker.py)."""
