"""M0 reference inference worker."""
