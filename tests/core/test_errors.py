"""Bad input to the engine: a clear error naming what is wrong, and the model left untouched."""
from __future__ import annotations

import pytest

from dropbp.core import DropBP
from dropbp.core.errors import ConfigError

from ..conftest import tiny_model
from .test_branches import hook_count


@pytest.mark.parametrize("kwargs,pattern", [
    ({"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\)"),
    ({"drop_rate": -0.2}, r"drop_rate must be a number in \[0, 1\)"),
    ({"drop_rate": 0.5, "rates": [0.5, 0.5]}, r"rates must hold one rate per branch \(4\)"),
    ({"drop_rate": 0.5, "sampler": "random"}, r"sampler must be one of 'bernoulli', 'pool', got 'random'"),
])
def test_api_errors_leave_model_untouched(kwargs, pattern):
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match=pattern):
        DropBP(model, **kwargs)
    assert hook_count(model) == 0


def test_engine_takes_no_device():
    """The engine knows no devices: no device or backend parameter on any public method, and no device API in the
    core's source (the driver owns devices, through a backend)."""
    import inspect
    from pathlib import Path

    import dropbp.core

    for name, member in inspect.getmembers(DropBP, callable):
        if not name.startswith("_") or name == "__init__":
            assert not {"device", "backend"} & set(inspect.signature(member).parameters), name
    core = Path(dropbp.core.__file__).parent
    for path in core.glob("*.py"):
        text = path.read_text()
        assert "torch.cuda" not in text and "habana" not in text and "torch.hpu" not in text, path.name


def test_forced_mask_errors():
    dropbp = DropBP(tiny_model("llama"), 0.5)
    with pytest.raises(ConfigError, match="mask must be 4 booleans"):
        dropbp.begin_step(0, mask=[True])
    with pytest.raises(ConfigError, match="mask names unknown branches"):
        dropbp.begin_step(0, mask=["model.layers.9.mlp"])
