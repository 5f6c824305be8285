"""Status lines of the long commands (`slam-hf train`, the demos): each module logs to its own
`logging.getLogger(__name__)`, and the command's `main` shows the `slam_hf` loggers on stdout.

Library calls (`train_text`, `run(...)` of a demo) log without printing anything unless their caller configures
logging; progress bars come from tqdm (Trainer's own, and ours over long loops).

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import logging
import sys


class _CurrentStdoutHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stdout` is when a line is written (a redirect, pytest's capture), not the
    one it was created under."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stdout
        pass


def show_status_lines(line_format: str = "[slam-hf] %(message)s", datefmt: str | None = None) -> None:
    """Show INFO lines of every `slam_hf` logger on stdout as `line_format`; calling it again replaces the format
    (one handler, so no line is written twice)."""
    package_logger = logging.getLogger("slam_hf")
    package_logger.setLevel(logging.INFO)
    handler = next((h for h in package_logger.handlers if isinstance(h, _CurrentStdoutHandler)), None)
    if handler is None:
        handler = _CurrentStdoutHandler()
        package_logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(line_format, datefmt=datefmt))
