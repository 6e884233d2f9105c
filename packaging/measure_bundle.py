"""Measure a built bundle: size on disk and cold start times (packaging/README.md).

    python packaging/measure_bundle.py [dist/QuantStudio]

"Cold" means the bundle's files are not in the page cache: each run first asks the kernel
to drop this folder's cached pages (posix_fadvise DONTNEED, Linux; nothing else on the
machine is evicted), then starts the launcher. Reported: ``--version`` (Python starts,
nothing heavy is imported) and a window shown offscreen (Qt and the main window; torch is
imported after the window shows). Three runs each, cold and warm, median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def evict(root: Path) -> None:
    if not hasattr(os, "posix_fadvise"):
        return
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - start


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/QuantStudio").resolve()
    launcher = root / ("QuantStudio.exe" if sys.platform == "win32" else "QuantStudio")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QUANTSTUDIO_EXIT_WHEN_SHOWN="1")
    print(f"bundle: {root}  {folder_size(root) / 1e9:.2f} GB")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    print(f"cpu: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    for label, args in (("--version", ["--version"]), ("window shown (offscreen)", [])):
        for cache in ("cold", "warm"):
            times = []
            for _ in range(3):
                if cache == "cold":
                    evict(root)
                times.append(timed([str(launcher), *args], env))
            print(f"{label:26s} {cache}: median {statistics.median(times):.2f} s  ({', '.join(f'{t:.2f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
