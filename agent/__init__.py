"""Edge agent: config, pipeline, store, API, CLI."""
