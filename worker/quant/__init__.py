"""Quantized tensors as stored in GGUF, and their NumPy reference dequantization.

CONTRACT (other modules rely on this; keep it):

    QuantTensor(name, qtype, shape, raw)
        qtype: gguf.GGMLQuantizationType
        shape: tuple in NumPy (row-major) order, e.g. (n_out, n_in) for a 2-D weight,
               (n_expert, n_out, n_in) for stacked MoE experts. (GGUF stores ggml `ne`
               reversed; the reader converts.)
        raw:   np.ndarray[uint8], the tensor's bytes exactly as stored (a memmap view,
               never copied by the reader). Rows are contiguous: each row of the last
               dimension is a whole number of quant blocks.

    dequantize(t: QuantTensor) -> np.ndarray[float32] of t.shape
    FORMATS: dict[GGMLQuantizationType, QuantFormat]   (block_size, type_size, description)

Implementation lives in one module per format family (this package's other modules).
"""
