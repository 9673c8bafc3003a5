"""The CI switch FASTRNN_NO_SKIPS (tests/conftest.py): a skip fails unless no install can
change it (the CPU, the platform), so a peer missing from CI's environment cannot pass."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

DEMO = textwrap.dedent(
    """
    import pytest

    def test_missing_peer():
        pytest.importorskip("fastrnn_no_such_module")

    def test_cpu_level():
        pytest.skip("this CPU cannot run the avx512 kernels")

    def test_runs():
        pass
    """
)


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_demo.py").write_text(DEMO)
    return subprocess.run(
        # conftest loaded as a plugin: its switch, not the demo's location, is under test
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conftest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_demo.py"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("strict", [False, True])
def test_no_skips_switch(tmp_path, strict):
    env = {"FASTRNN_NO_SKIPS": "1"} if strict else {"FASTRNN_NO_SKIPS": "0"}
    proc = _run(tmp_path, **env)
    if strict:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "1 failed, 1 passed, 1 skipped" in proc.stdout
        assert "skipped, but FASTRNN_NO_SKIPS is set (CI): could not import" in proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 passed, 2 skipped" in proc.stdout
