"""Bridges to other tools, each imported only when used: ``hf`` (transformers' ``from_pretrained``
of an artifact folder, through a registered quantizer) and ``export`` (an artifact at a budget as
a plain transformers folder or a GGUF file)."""
