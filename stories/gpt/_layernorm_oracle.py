"""torch's LayerNorm as the oracle for the GPT-2 LayerNorm stories (GT-009/010/011)."""
import numpy as np
import torch


def torch_layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    return torch.nn.functional.layer_norm(torch.from_numpy(x), (x.shape[-1],), torch.from_numpy(weight),
                                          torch.from_numpy(bias), eps).numpy()


def inputs(seed, T, D, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, D)) * scale + offset).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(D)).astype(np.float32)
    b = (0.3 * rng.standard_normal(D)).astype(np.float32)
    return x, w, b
