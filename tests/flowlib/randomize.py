"""Random non-identity parameters for tests: zero-initialised output layers would otherwise make couplings and
priors the identity (hiding a dropped layer) or block gradients."""
import torch

from flowlib.actnorm import ActNorm


def randomize(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded Gaussian noise of std ``scale`` to every parameter and mark ActNorm initialised (the tests
    concern a fixed map, not the first-batch initialisation). Returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(1)
    return module
