"""A second worker of the M0 HTTP contract (docs/http-api.md) whose engine is llama.cpp.

It shares no code with `worker/`: it reads the contract from the docs, like a third party would.
`llama-server` (built from the llama.cpp vendored in the llama-cpp-python sdist,
fixtures/llama_cpp.py) runs the model; this adapter serves `/execute`, `/health` and `/cancel`
in front of it and drives generation one token per upstream `/completion` call, so that every
token's id and bytes are known (llama-server's own stream withholds the ids of tokens that end
inside a UTF-8 character) and a cancel takes effect within one token.

    python -m tools.llama_cpp_worker --model FILE.gguf [--port 0] [--ctx N] [--llama-server PATH]

Modules: `facts` (the file's facts by gguf-py), `upstream` (the llama-server process and its
calls), `requests` (the contract's validation rules), `textstream` (UTF-8 and stop-string
holdback), `app` (the HTTP app), `__main__` (the command line).
"""
