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

__version__ = "0.1.0"
__all__ = ["AGGREGATIONS", "BandConfig", "BandLoss", "DIVERGENCES", "KL_ESTIMATORS", "METRIC_NAMES", "band_bounds",
           "band_loss", "cpu_kernel_isa", "reference"]
