"""Infrastructure: infra/local runs the real services without Docker; manifests for other setups."""
