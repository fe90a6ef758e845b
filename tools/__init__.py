"""Programs that sit beside the worker and are not part of it."""
