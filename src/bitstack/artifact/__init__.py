"""The on-disk artifact: a directory with a JSON manifest and safetensors files (no pickle)."""
