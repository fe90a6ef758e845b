"""GT-045 OOM recovery (GPT): the FT-042 scenarios on the GPT-2 architecture (MHA: KV = all heads).

Acceptance: a GPT-2 request whose KV cache exceeds the memory cap gets VRAM_OOM with required and
available bytes, the next request is answered unchanged, device memory returns to baseline; a
GPT-2 model over the cap is refused at load with nothing left allocated.
"""
import pytest

from stories.foundation._oom_scenarios import model_that_does_not_fit, oom_then_recover

pytestmark = [pytest.mark.gpu, pytest.mark.exclusive_device]


@pytest.mark.story("GT-045")
def test_gpt2_request_oom_then_recovery():
    # the whole 128-position cache (64 KiB) exceeds a 40 kB cap; a 32-position request (16 KiB) fits
    oom_then_recover("gpt2", headroom=40_000, huge=128)


@pytest.mark.story("GT-045")
def test_gpt2_model_larger_than_the_cap_is_refused():
    model_that_does_not_fit("gpt2")
