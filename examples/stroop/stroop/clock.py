"""The clock process: schedules a periodic job for the worker."""

from __future__ import annotations

import logging
import os
import time

from . import jobs

log = logging.getLogger("stroop.clock")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s clock %(message)s")
    interval = float(os.environ.get("CLOCK_INTERVAL", "30"))
    while True:
        try:
            jobs.enqueue("tick", "clock", interval=interval)
            log.info("scheduled a tick")
        except Exception:  # Redis may restart; try again next time
            log.exception("could not schedule")
        time.sleep(interval)


if __name__ == "__main__":
    main()
