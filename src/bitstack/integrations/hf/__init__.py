"""transformers integration: ``import bitstack.integrations.hf`` registers the ``"bitstack"``
quantization method, after which ``AutoModelForCausalLM.from_pretrained(FOLDER)`` loads an
artifact folder that carries transformers' files (``bitstack export ART --format bitstack-hf``,
or ``model.save_pretrained``) at the budget of its ``quantization_config`` (docs/transformers.md).
"""

from bitstack.integrations.hf.quantizer import BitstackConfig, BitstackHfQuantizer, folder_config, register

register()

__all__ = ["BitstackConfig", "BitstackHfQuantizer", "folder_config", "register"]
