"""The app of the start-up benchmarks: standard library only, so it starts as fast as Python can.

    python bench/cold_app.py start | once | idle

Prints ``<started_ns> <state_ok_ns>`` (CLOCK_MONOTONIC, which Linux keeps system-wide, so the
bench compares it with its own clock): when its first line ran, and when its first state call
(a save to ``statestore`` on ``DAPR_HTTP_PORT``) succeeded. ``start`` makes no call (0 for the
second figure); ``once`` exits after the call; ``idle`` then sleeps until stopped.
"""

import http.client
import os
import sys
import time

started = time.monotonic_ns()


def first_save(port: int) -> int:
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", "/v1.0/state/statestore", b'[{"key":"cold","value":1}]')
            if connection.getresponse().status == 204:
                return time.monotonic_ns()
        except OSError:
            pass
        time.sleep(0.002)


def main() -> None:
    mode = sys.argv[1]
    ok = 0 if mode == "start" else first_save(int(os.environ["DAPR_HTTP_PORT"]))
    print(started, ok, flush=True)
    if mode == "idle":
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
