"""Device profiles and the fleet simulator (which runs the real daemon code)."""
