"""Running one of the benchmark's measuring tools (`python -m bench.<tool>`) as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench_tool(tool: str, arguments: list[str], *, timeout: float) -> str:
    """`python -m bench.<tool> ARGUMENTS` from the repository's root: its output, once it
    has exited successfully."""
    command = [sys.executable, "-m", f"bench.{tool}", *arguments]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr
    return run.stdout
