"""The inference core: graph contract, config, pipeline, KV cache, generation and sampling."""
