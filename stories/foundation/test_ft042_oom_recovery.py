"""FT-042 OOM recovery: running out of device memory is an error with a code, never a crash.

Acceptance (memory made scarce with a configured cap): a request whose KV cache does not fit is
refused before allocation with VRAM_OOM and the required/available bytes; afterwards the backend
serves the same request as before, residency is intact and device memory is back at baseline;
a model whose weights exceed the cap is refused while loading and leaves nothing allocated.
"""
import pytest

from stories.foundation._oom_scenarios import model_that_does_not_fit, oom_then_recover

pytestmark = [pytest.mark.gpu, pytest.mark.exclusive_device]


@pytest.mark.story("FT-042")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_request_oom_then_recovery(arch):
    oom_then_recover(arch)


@pytest.mark.story("FT-042")
def test_model_larger_than_the_cap_is_refused():
    model_that_does_not_fit("llama")
