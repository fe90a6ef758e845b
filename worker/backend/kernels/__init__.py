"""CUDA kernels (`<name>.cu`, compiled at run time by NVRTC) and, beside each, its launcher (`<name>.py`).

A launcher knows its kernel's launch geometry and C signature; it takes the backend (for
`_launch`, which looks the function up once and launches it on the current stream) and device
arrays whose shapes the caller (worker/backend/cuda.py) has already checked.
"""
