"""``cloud-hub serve`` with cProfile switched on and off by signals (for ``hub_rest.py --profile``).

    python profiled_hub.py OUT.prof serve --port 8000 ...

SIGUSR1 starts profiling the event-loop thread, SIGUSR2 stops it and writes OUT.prof, so the
profile holds the load window only, not the start-up imports.
"""

import cProfile
import signal
import sys

out = sys.argv.pop(1)
prof = cProfile.Profile()


def _start(_sig, _frame) -> None:
    prof.enable()


def _stop(_sig, _frame) -> None:
    prof.disable()
    prof.dump_stats(out)


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)

from cloud_hub.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
