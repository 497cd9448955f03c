"""ARM devices: does the device install resolve to binary wheels, and does it run there."""
