"""Training progress on the console: a live bar on a terminal, plain lines in a log file.

Keras' ``Progbar`` always redraws with backspaces, carriage returns and colour codes (it
takes any POSIX system for a dynamic display), so a log written to a file becomes one
unreadable line per epoch with thousands of redraws. :func:`progress` gives that bar only
when stdout is a terminal; otherwise :class:`LineProgress` prints one plain line every
``every`` steps (about ten per epoch) and at the end of the epoch.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Iterable, Optional, Sequence, Tuple

LINES_PER_EPOCH = 10


class LineProgress:
    """``update(step, values)`` like ``keras.utils.Progbar``, printing plain lines such as
    ``epoch 2/4 step 30/100: loss=1.2345 fused=1.1000 (0.52 s/step)`` every ``every``
    steps and at the last step (values are the stateful running means the trainer passes;
    s/step is measured since the previous line, so the first line includes the tracing)."""

    def __init__(
        self,
        target: int,
        epoch: Optional[int] = None,
        epochs: Optional[int] = None,
        every: Optional[int] = None,
        stream=None,
        verbose: bool = True,
    ):
        self.target = int(target)
        self.every = max(1, int(every) if every else math.ceil(self.target / LINES_PER_EPOCH))
        self.prefix = f"epoch {epoch}/{epochs} " if epoch is not None and epochs is not None else ""
        self.stream = stream
        self.verbose = verbose
        self._last_time = time.time()
        self._last_step = None

    def update(
        self, current: int, values: Optional[Iterable[Tuple[str, float]]] = None, finalize=None
    ):
        if self._last_step is None:
            self._last_step = current - 1  # the first update ends the first step
        if not self.verbose:
            return
        last = current >= self.target if finalize is None else finalize
        if current % self.every and not last:
            return
        stream = self.stream or sys.stdout
        now = time.time()
        rate = (now - self._last_time) / max(current - self._last_step, 1)
        self._last_time, self._last_step = now, current
        text = " ".join(f"{k}={float(v):.4f}" for k, v in (values or []))
        width = len(str(self.target))
        print(
            f"{self.prefix}step {current:{width}d}/{self.target}: {text} ({rate:.2f} s/step)",
            file=stream,
            flush=True,
        )


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    target: int,
    stateful_metrics: Sequence[str] = (),
    verbose: bool = True,
    epoch: Optional[int] = None,
    epochs: Optional[int] = None,
):
    """A Keras ``Progbar`` on a terminal, a :class:`LineProgress` otherwise (log files, pipes)."""
    if is_terminal():
        import keras

        return keras.utils.Progbar(
            target, stateful_metrics=list(stateful_metrics), verbose=1 if verbose else 0
        )
    return LineProgress(target, epoch, epochs, verbose=verbose)
