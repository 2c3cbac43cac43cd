"""scikit-build-core metadata provider (pyproject.toml): the package version, read from the one place it is
written (CMakeLists.txt's ``project(bandpo VERSION ...)``), and an early stop for a build that cannot work.

pip asks for the metadata before anything else, so this is the first code of ours that runs in a build. The
torch extension is compiled against the headers of an installed torch; pip's build isolation hides the
user's torch (and torch is deliberately not a build requirement: that would fetch a multi-GB CUDA torch), so
without torch in the build environment the build stops here, in a second, with the command that works.
BANDPO_TORCH_DIR (torch headers from elsewhere, ci/wheel.sh) or BANDPO_NO_TORCH=1 (an sdist, or a build with
-Ccmake.define.BANDPO_TORCH=OFF) skip the check.
"""

from __future__ import annotations

import importlib.util
import os
import re

MESSAGE = """
bandpo: the build needs torch (>= 2.10) installed in the building Python, but pip's build isolation hides it.
Install torch, then build without isolation:

    pip install torch scikit-build-core pybind11 ninja cmake
    pip install --no-build-isolation .

or install the prebuilt wheel (pip install bandpo), which needs no compiler.
"""


def dynamic_metadata(field: str, settings: dict | None = None) -> str:
    if field != "version":
        raise RuntimeError(f"bandpo's metadata provider gives the version only, not {field!r}")
    if not (os.environ.get("BANDPO_TORCH_DIR") or os.environ.get("BANDPO_NO_TORCH")):
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError(MESSAGE)
    with open("CMakeLists.txt", encoding="utf-8") as f:
        match = re.search(r"^project\(bandpo VERSION ([0-9]+\.[0-9]+\.[0-9]+)", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("bandpo: no 'project(bandpo VERSION x.y.z' line in CMakeLists.txt")
    return match.group(1)
