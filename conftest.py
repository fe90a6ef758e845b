"""Root conftest: loads the story/gate plugin (gates/harness/plugin.py)."""
pytest_plugins = ["gates.harness.plugin", "fixtures.server_fixtures"]
