"""Hugging Face model handling: where models come from, and how their structure is found."""
