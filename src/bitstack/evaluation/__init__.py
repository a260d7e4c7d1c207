"""Quality evaluation: perplexity (standard protocol) and zero-shot tasks."""
