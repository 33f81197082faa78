"""What a CrossLMM is to the runtime: the graph contract, the config and the size limits."""
