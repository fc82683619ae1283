"""The ``dropbp`` console script. Ctrl-C anywhere, even while torch is still being imported, ends the run with
"interrupted" and exit code 130; if native code keeps the interpreter busy, the process leaves anyway ``GRACE_S``
(0.75 s) after the Ctrl-C (during training, after the second Ctrl-C: the first one saves a checkpoint). Results are never half-written either way: they are published as a set
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
    native call; gives the main thread ``GRACE_S`` to unwind through KeyboardInterrupt, then leaves.

    While another SIGINT handler is in place (``dropbp train`` installs one that finishes the step and saves a
    checkpoint before exiting), the first Ctrl-C is that handler's to serve, however long the save takes; a second
    one is enforced as usual."""
    deferred = False
    while True:
        try:
            data = os.read(fd, 16)
        except OSError:
            return
        for signum in data:
            if signum != signal.SIGINT:
                continue
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler or deferred:
                time.sleep(GRACE_S)
                _leave_now()
            deferred = True


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
