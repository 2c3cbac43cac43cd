"""bandpo: exact Band (trust-region) ratio bounds and the fused BandPO loss as torch custom ops.

    import bandpo
    loss, metrics = bandpo.band_loss(logp, old_logp, advantages, mask)          # Band-KL, delta 0.05
    loss.backward()
    lower, upper = bandpo.band_bounds(old_logp, bandpo.BandConfig(divergence="tv"))

The same ops are ``torch.ops.bandpo.band_bounds`` / ``torch.ops.bandpo.band_loss``; ``bandpo.reference``
is the plain-PyTorch implementation of the same math.
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _C  # noqa: F401  (registers torch.ops.bandpo)
from . import _ops  # noqa: F401  (fake kernels and autograd)
from . import reference
from .api import METRIC_NAMES, BandLoss, band_bounds, band_loss
from .config import AGGREGATIONS, DIVERGENCES, KL_ESTIMATORS, BandConfig

cpu_kernel_isa = _C.cpu_kernel_isa
has_cuda_kernels = _C.has_cuda_kernels
input_checks = _C.input_checks


def set_input_checks(enabled: bool) -> None:
    """Make CUDA ``band_loss`` synchronise after its forward and raise ``ValueError`` (naming the argument
    and the flat index) for NaN / out-of-range values at valid positions, as the CPU op always does.

    Off by default, because the check is a host synchronisation (it also breaks CUDA-graph capture); without
    it such inputs make the loss and all metrics NaN. The environment variable ``BANDPO_CHECK_INPUTS=1``
    switches it on at import.
    """
    _C.set_input_checks(bool(enabled))


__version__ = "0.1.0"
__all__ = ["AGGREGATIONS", "BandConfig", "BandLoss", "DIVERGENCES", "KL_ESTIMATORS", "METRIC_NAMES", "band_bounds",
           "band_loss", "cpu_kernel_isa", "has_cuda_kernels", "input_checks", "reference",
           "set_input_checks"]
