"""Every face gives the bits recorded before the last refactor (tests/data/record_outputs.py says what is in it).

Run in a subprocess with the baseline CPU kernels (BANDPO_CPU_ISA is read once per process, and the AVX2 and
AVX-512 kernels round float32 differently from the baseline's: each is exact to its own tolerance, not to the
others' bits). The lm_head entries go through torch's CPU GEMMs, recorded with the torch this suite pins.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {data!r})
import record_outputs as r
import bandpo
assert bandpo.cpu_kernel_isa() == "baseline", bandpo.cpu_kernel_isa()
want = np.load(r.PATH)
got = r.compute()
assert sorted(got) == sorted(want.files), sorted(set(got) ^ set(want.files))
for k in want.files:
    if not np.array_equal(want[k], got[k], equal_nan=True):
        i = int(np.flatnonzero(~((want[k] == got[k]) | (np.isnan(want[k]) & np.isnan(got[k]))))[0])
        print(f"{{k}}: first difference at [{{i}}]: recorded {{want[k][i]!r}}, now {{got[k][i]!r}}")
"""


def test_outputs_are_the_recorded_bits():
    env = dict(os.environ, BANDPO_CPU_ISA="baseline")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(data=os.path.join(HERE, "data"))],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == "", "outputs changed:\n" + run.stdout
