"""The shared per-token headers compile as CUDA device code (nvcc alone: no GPU and no CUDA torch needed).

Skipped, with the reason shown, where no nvcc is found (set CUDA_PATH or put nvcc on PATH).
"""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def find_nvcc():
    for base in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and os.path.exists(os.path.join(base, "bin", "nvcc")):
            return os.path.join(base, "bin", "nvcc")
    return shutil.which("nvcc")


@pytest.mark.skipif(find_nvcc() is None, reason="no nvcc found (CUDA_PATH, CUDA_HOME, /usr/local/cuda, PATH)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_per_token_math_compiles_for_the_device(tmp_path, arch):
    cmd = [
        find_nvcc(),
        "-std=c++17",
        f"-arch={arch}",
        "-Werror",
        "all-warnings",
        "--resource-usage",
        "-I",
        os.path.join(ROOT, "csrc", "include"),
        "-c",
        os.path.join(HERE, "device", "per_token_math.cu"),
        "-o",
        str(tmp_path / "per_token_math.o"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # No local-memory spills in the per-token math (they would cost a memory round trip per token).
    assert "spill stores" in run.stdout + run.stderr
    for line in (run.stdout + run.stderr).splitlines():
        if "spill stores" in line:
            assert line.strip().split(",")[1].strip().startswith("0 bytes spill stores"), line
