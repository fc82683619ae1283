"""The ``dropbp`` console script. Ctrl-C anywhere, even while torch is still being imported, ends the run with
"interrupted" and exit code 130; if native code keeps the interpreter busy, the process leaves anyway ``GRACE_S``
(0.75 s) after the Ctrl-C. Results are never half-written either way: they are published as a set
(:func:`dropbp.recipes.report.publish.publish`). Nothing heavy is imported before the handlers are in place."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_S = 0.75
INTERRUPTED = 130


def _leave_now() -> None:
    os.write(2, b"dropbp: interrupted.\n")
    os._exit(INTERRUPTED)


def _watch(fd: int) -> None:
    """Woken by the C-level signal handler (``signal.set_wakeup_fd``) even while the main thread is inside a long
    native call; gives the main thread ``GRACE_S`` to unwind through KeyboardInterrupt, then leaves."""
    while True:
        try:
            data = os.read(fd, 16)
        except OSError:
            return
        if signal.SIGINT in data:
            time.sleep(GRACE_S)
            _leave_now()


def install_interrupt_handling() -> None:
    """SIGINT raises KeyboardInterrupt as usual, and a watcher thread enforces the grace period."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=_watch, args=(read_fd,), name="dropbp-interrupt", daemon=True).start()


def run() -> None:
    """Entry point of the ``dropbp`` console script."""
    install_interrupt_handling()
    try:
        from dropbp.recipes.cli import main

        code = main()
    except KeyboardInterrupt:
        print("dropbp: interrupted.", file=sys.stderr)
        code = INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    run()
