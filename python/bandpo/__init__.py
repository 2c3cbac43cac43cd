"""bandpo: exact Band (trust-region) ratio bounds and the fused BandPO loss as torch custom ops.

    import bandpo
    out = bandpo.band_loss(logp, old_logp, advantages, mask)                    # Band-KL, delta 0.05
    out.loss.backward()
    lower, upper = bandpo.band_bounds(old_logp, bandpo.BandConfig(divergence="tv"))

The same ops are ``torch.ops.bandpo.band_bounds`` / ``torch.ops.bandpo.band_loss``; ``bandpo.reference``
is the plain-PyTorch implementation of the same math. Without torch installed, ``bandpo.np`` (numpy arrays)
and the C/C++ library (``cmake_prefix_path()``) still work; the torch API is then absent.
"""

import os
from importlib import metadata as _metadata

from .config import AGGREGATIONS, DIVERGENCES, KL_ESTIMATORS, METRIC_NAMES, PRESETS, BandConfig

try:  # one definition of the version: CMakeLists.txt's project(), from which the package metadata is made
    __version__ = _metadata.version("bandpo")
except _metadata.PackageNotFoundError:  # a source tree on sys.path
    __version__ = "0+unknown"

# The oldest torch the extension module loads in: the TORCH_TARGET_VERSION it is built for (CMakeLists.txt,
# BANDPO_TORCH_TARGET_VERSION; pyproject.toml's torch requirement says the same).
TORCH_MIN_VERSION = (2, 10)


def cmake_prefix_path() -> str:
    """The folder to put on CMAKE_PREFIX_PATH so that ``find_package(bandpo CONFIG)`` finds the C/C++ library
    shipped in this package (``bandpo::bandpo``, headers ``<bandpo/cpu.h>``, ``<bandpo/bandpo.h>``)."""
    return os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """Path of the shared library libbandpo (the C ABI of ``<bandpo/bandpo.h>``, e.g. for ctypes)."""
    return os.path.join(cmake_prefix_path(), "lib", "libbandpo.so")


__all__ = [
    "AGGREGATIONS",
    "BandConfig",
    "DIVERGENCES",
    "KL_ESTIMATORS",
    "METRIC_NAMES",
    "PRESETS",
    "cmake_prefix_path",
    "library_path",
]

try:
    import torch  # noqa: F401  (libtorch must be loaded before the extension)
except ImportError:  # no torch: bandpo.np and the C/C++ library only
    torch = None

if torch is not None:
    _torch_version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if _torch_version < TORCH_MIN_VERSION:
        raise ImportError(
            f"bandpo needs torch >= {TORCH_MIN_VERSION[0]}.{TORCH_MIN_VERSION[1]} (its operators use that "
            f"release's stable ABI); found torch {torch.__version__}. Upgrade torch, or use bandpo.np "
            f"without torch."
        )
    from . import _C  # noqa: F401  (registers torch.ops.bandpo)
    from . import _ops  # noqa: F401  (fake kernels, Python kernels and autograd of every op)
    from . import reference
    from .api import BandLoss, band_bounds, band_loss
    from .f_divergence import FDivergence, f_divergence_bounds
    from .lm_head import fused_linear_band_loss, linear_logprob_entropy

    cpu_kernel_isa = _C.cpu_kernel_isa
    has_cuda_kernels = _C.has_cuda_kernels
    input_checks = _C.input_checks

    def set_input_checks(enabled: bool) -> None:
        """Make CUDA ``band_loss`` synchronise after its forward and raise ``ValueError`` (naming the argument
        and the flat index) for NaN / out-of-range values at valid positions, as the CPU op always does.

        Off by default, because the check is a host synchronisation (it also breaks CUDA-graph capture);
        without it such inputs make the loss and all metrics NaN. The environment variable
        ``BANDPO_CHECK_INPUTS=1`` switches it on at import.
        """
        _C.set_input_checks(bool(enabled))

    __all__ += [
        "BandLoss",
        "FDivergence",
        "band_bounds",
        "band_loss",
        "cpu_kernel_isa",
        "f_divergence_bounds",
        "fused_linear_band_loss",
        "has_cuda_kernels",
        "input_checks",
        "linear_logprob_entropy",
        "reference",
        "set_input_checks",
    ]
