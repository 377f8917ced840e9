"""The README's examples run, and the README shows them as they are in examples/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parent.parent


def test_readme_shows_the_group_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "serve_with_group.py").read_text()
    body = example.split('"""', 2)[2].strip()
    assert body in readme, "README's serve()/Group example differs from examples/serve_with_group.py"


@pytest.mark.timeout(60)
def test_group_example_serves_and_stops(tmp_path: Path) -> None:
    # Run the example on a free port (rewriting only the bind address) and stop it with SIGINT.
    src = (ROOT / "examples" / "serve_with_group.py").read_text().replace('"127.0.0.1:8000"', '"127.0.0.1:0"')
    src = src.replace("group=group)", "group=group, debug=None)")
    script = tmp_path / "example.py"
    script.write_text(src)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if "serving asgi app on " in line:
                url = line.split("serving asgi app on ")[1].strip()
                break
        assert url, "example did not start"
        assert "'requests': 1" in httpx.get(url, timeout=10).text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
