"""Running the graphs: the pipeline, prefill pieces, the KV cache and sampling."""
