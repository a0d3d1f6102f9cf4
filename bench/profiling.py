"""py-spy over the measured window (`--profile DIR`): one recording per process, in py-spy's raw (collapsed stack)
format, plus a summary of the hottest functions (bench/profile_summary.py reads them again later).

Only the thread holding the GIL is sampled (--gil): on this machine py-spy's idle detection counts threads blocked in
queue.get / select / Condition.wait as busy, which buried the real costs. Native time spent without the GIL (SQLite's
fsync, gRPC core's poller) is then not in these profiles: use `perf record -g -p PID` for that.

py-spy samples from outside the process without pausing it (--nonblocking), so the code under test is not changed,
but py-spy's own CPU is not free on two cores: profile in separate runs from the ones whose figures you report.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise FileNotFoundError("py-spy is not installed (pip install py-spy, or `make setup` for the dev extras)")
    return found


class Profiler:
    def __init__(self, out_dir: Path, pids: dict[str, int], rate_hz: int = 250, native: bool = False) -> None:
        self._native = native
        self._out_dir = out_dir
        self._pids = pids
        self._rate_hz = rate_hz
        self._procs: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[str, str] = {}

    def start(self) -> None:
        self._out_dir.mkdir(parents=True, exist_ok=True)
        exe = py_spy()
        for name, pid in self._pids.items():
            out = self._out_dir / f"{name}.txt"
            self.outputs[name] = str(out)
            self._procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(self._rate_hz),
                        "--format",
                        "raw",
                        "--output",
                        str(out),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        """Stops the recorders (SIGINT makes py-spy write its file). Idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
