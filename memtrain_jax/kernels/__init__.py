"""Hand-written kernels behind the decoder's hot paths, each with an XLA fallback."""
