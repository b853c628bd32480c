"""Spin an rclpy executor in a background thread and stop it safely.

rclpy's ``Executor.shutdown()`` (Kilted) destroys the executor's guard condition without waiting for a thread that is
still spinning: that thread may be building a wait set with it at that moment (``InvalidHandle``), and a callback it
dispatched may run after its node was destroyed ("cannot use Destroyable ... never retrieved" at exit). So the thread
spins until a future is done, :meth:`SpinThread.stop` completes the future, joins the thread, and only then shuts
the executor down (which also waits for the callbacks still in a multi-threaded executor's pool).
"""

from __future__ import annotations

import threading
from typing import Any

from rclpy.task import Future


class SpinThread:
    """``executor`` spun in a daemon thread from :meth:`start` until :meth:`stop`."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self._stop: Future = Future()
        self.thread = threading.Thread(target=executor.spin_until_future_complete, args=(self._stop,), daemon=True)

    def start(self) -> SpinThread:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the spin, join the thread, then shut the executor down. Safe to call more than once."""
        if not self._stop.done():
            self._stop.set_result(True)  # wakes the executor; spin_until_future_complete returns
        if self.thread.is_alive():
            self.thread.join(timeout=timeout_s)
        self.executor.shutdown(timeout_sec=timeout_s)
