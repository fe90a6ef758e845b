"""The story/gate harness: story index, gate manifests, the pytest plugin and the gate board."""
