"""Hard limits that keep a hostile file from making the reader allocate or loop without bound.

Real files stay far inside them: GPT-OSS-120B has under 700 tensors and ~40 metadata keys;
the largest vocabularies (~260k tokens, ~450k merges) are the largest arrays.
"""
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_ARRAY_LEN = 1 << 24
MAX_STRING_BYTES = 1 << 26        # also bounded by the bytes left in the file
MAX_TENSOR_NAME_BYTES = 256       # ggml's own limit is 63
MAX_DIMS = 4                      # GGML_MAX_DIMS
MAX_ELEMENTS = 1 << 44            # per tensor; also bounded by the file's size
MAX_ALIGNMENT = 1 << 16
