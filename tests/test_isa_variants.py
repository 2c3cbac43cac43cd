"""Every CPU kernel variant this machine can run gives exact bounds and the reference's loss.

The default run uses the best variant; here each one is forced with BANDPO_CPU_ISA in a subprocess (the
choice is made once per process), so that a CI machine without AVX-512 is not the first to run AVX2 code.
"""

import os
import subprocess
import sys

import pytest

import bandpo

HERE = os.path.dirname(os.path.abspath(__file__))
SELECTION = [
    "test_exactness.py::test_kl_bounds_match_mpmath",
    "test_exactness.py::test_dcpo_bounds_match_mpmath",
    "test_loss.py::test_matches_reference_float64",
    "test_loss.py::test_low_precision_dtypes",
]


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_variant(isa):
    env = dict(os.environ, BANDPO_CPU_ISA=isa)
    probe = subprocess.run(
        [sys.executable, "-c", "import bandpo; print(bandpo.cpu_kernel_isa())"],
        env=env,
        capture_output=True,
        text=True,
        cwd=HERE,
        check=True,
    )
    got = probe.stdout.strip()
    if got != isa:
        pytest.skip(f"this CPU cannot run the {isa} kernels (got {got})")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SELECTION],
        env=env,
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_default_is_the_best_available():
    assert bandpo.cpu_kernel_isa() in ("avx512", "avx2", "baseline")
