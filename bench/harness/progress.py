"""A one-line progress bar on stderr (a line per item when stderr is not a terminal)."""
import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 24):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.width = width
        self.start = time.perf_counter()
        self.interactive = stream.isatty()
        self._drawn = False

    def _line(self, label: str) -> str:
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = _clock(time.perf_counter() - self.start)
        return f"[{bar}] {self.done}/{self.total} {elapsed} {label}"

    def show(self, label: str) -> None:
        """Announce the item about to run."""
        if self.interactive:
            columns = 120
            self.stream.write("\r" + self._line(label)[:columns].ljust(columns))
            self._drawn = True
        else:
            self.stream.write(self._line(label) + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def clear(self) -> None:
        """Erase the bar so that a table can be printed in its place."""
        if self._drawn:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
            self._drawn = False
