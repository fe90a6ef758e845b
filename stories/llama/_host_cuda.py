"""Building CUDA kernel sources for the host (g++), one host thread per CUDA thread.

Shared by the host-thread tests of the kernels (LT-016 attention, LT-019 fused decode ops): each
supplies its own prelude (the CUDA types and intrinsics its kernels use) and entry points; this
module holds the launcher those entry points call, the extraction of a header's device function,
and the build.
"""
import ctypes
import re
import subprocess
from pathlib import Path

# launch(gx, gy, threads, seed, body): every block of the grid in a seeded shuffled order (a kernel
# must not depend on block order), each block's threads as host threads with a block barrier and
# a barrier a warp (the prelude's __syncthreads and shuffles use block_barrier and warp_barriers).
THREADED_LAUNCH = r"""
static void launch(unsigned gx, unsigned gy, unsigned threads, unsigned seed, const std::function<void()>& body) {
    gridDim = dim3{gx, gy, 1};
    blockDim = dim3{threads, 1, 1};
    std::vector<dim3> blocks;
    for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) blocks.push_back(dim3{x, y, 0});
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(seed));
    for (const dim3& b : blocks) {
        blockIdx = b;
        std::barrier<> bb(threads);
        block_barrier = &bb;
        std::vector<std::barrier<>*> wb;
        for (unsigned w = 0; w < threads / 32; ++w) wb.push_back(warp_barriers[w] = new std::barrier<>(32));
        std::vector<std::thread> ts;
        for (unsigned i = 0; i < threads; ++i) ts.emplace_back([&, i] { threadIdx = dim3{i, 0, 0}; body(); });
        for (auto& t : ts) t.join();
        for (auto* p : wb) delete p;
    }
}
"""


def device_function(path: Path, name: str) -> str:
    """The text of device function `name` of a header (from its signature to its closing brace)."""
    text = path.read_text()
    m = re.search(rf"^__device__ __forceinline__ \w+ {name}\(.*?^}}\n", text, flags=re.S | re.M)
    assert m, f"{path.name} no longer defines {name}"
    return m.group(0)


def build_host_library(text: str, work: Path, stem: str, timeout: int) -> ctypes.CDLL:
    """Compile `text` (C++20) into a shared library in `work` and load it."""
    src, lib = work / f"{stem}.cpp", work / f"{stem}.so"
    src.write_text(text)
    result = subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-Wno-unknown-pragmas",
                             "-o", str(lib), str(src)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return ctypes.CDLL(str(lib))
