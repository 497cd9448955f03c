"""``cloud-hub demo``: the whole product in one command (see :mod:`cloud_hub.demo.runner`)."""
