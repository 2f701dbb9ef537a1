import pytest
import torch


@pytest.fixture
def float64():
    """Equivalences are proven in float64 (SpikingJelly's CPU path supports it): in float32 a
    single rounding flip at the threshold cascades downstream (../shared/SAF.md)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)
