"""What an edit did: metrics, perplexity, the collapse guard, causal tracing and its plots, the layer suggestion."""
