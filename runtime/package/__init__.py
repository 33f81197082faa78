"""The package on disk: manifest, hashes, size limits, staging and trust checks."""
