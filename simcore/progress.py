"""A small progress bar for long work (no tqdm dependency).

On a terminal it redraws one line; otherwise (logs, CI) it prints a line at most
every `min_interval` seconds so that logs stay short.
"""
from __future__ import annotations

import sys
import time


def _fmt_time(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int | None, desc: str = "", unit: str = "it",
                 stream=None, enabled: bool = True, min_interval: float | None = None,
                 scale: float = 1.0):
        self.total, self.desc, self.unit, self.scale = total, desc, unit, scale
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if min_interval is not None else (0.1 if self.tty else 10.0)
        self.n = 0
        self.start = self._last = time.perf_counter()
        self.postfix = ""

    def update(self, n: int = 1, force: bool = False, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = "  ".join(f"{k} {v}" for k, v in postfix.items())
        now = time.perf_counter()
        if self.enabled and (force or now - self._last >= self.min_interval):
            self._last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        now = now or time.perf_counter()
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        n = self.n / self.scale
        num = (lambda v: f"{v:.1f}") if self.scale != 1 else (lambda v: f"{v:g}")
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            head = f"{self.desc} [{bar}] {num(n)}/{num(self.total / self.scale)} {frac:4.0%}"
            tail = f"{_fmt_time(elapsed)}<{_fmt_time(eta)}"
        else:
            head, tail = f"{self.desc} {num(n)} {self.unit}", _fmt_time(elapsed)
        rate /= self.scale
        return f"{head}  {rate:.3g} {self.unit}/s  {tail}  {self.postfix}".rstrip()

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
