"""Sub-commands of `python -m worker`: each module here defines register(subparsers).

register() adds its parser and sets `func=run` (run(args) -> int exit status). Modules import
their heavy dependencies inside run(), so `python -m worker --help` stays fast.
"""
