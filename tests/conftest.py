"""Shared fixtures. Heavy tests run the real engines on the real tiny model (built once into DH_CACHE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def need_shared_data(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} is absent (see ../shared/data/MANIFEST.md)")
    return path


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from engine.models import build_smollm2

    return build_smollm2()


@pytest.fixture(scope="session")
def int3_model(tiny_model: Path, tmp_path_factory) -> Path:
    from engine.degrade import degrade

    return degrade("smollm2-135m", "rtn-int3", tmp_path_factory.mktemp("cand") / "rtn-int3")
