"""GGUF export (llama.cpp): refused, with the reason.

A GGUF file holds one tensor type per weight.  A BitStack prefix is exactly a GGUF block type
only where a weight's loaded blocks form a uniform grid per block of 32 inputs with no run-time
input scale (planes: J ≤ 4 blocks on groups of 32 are a 2^J-level grid per group, the shape of
Q4_1's scale and minimum); the activation scaling that every artifact applies (folded where a norm
precedes the linear, a run-time ``input_scale`` elsewhere) scales each input column, which no
GGUF block type stores.  A float GGUF (F16/F32 of the dense weights) would be faithful but needs
llama.cpp's per-architecture tensor naming, Q/K permutation and tokenizer metadata, which this
version does not write.  Use ``--format hf`` (a plain float transformers folder) and llama.cpp's
``convert_hf_to_gguf.py`` on it: that conversion is faithful at F16/F32.
"""

from __future__ import annotations

from bitstack.errors import InputError

REASON = ("GGUF export is not supported: no GGUF tensor type holds a BitStack prefix exactly (the per-column "
          "activation scale), and float GGUF writing is not implemented; export --format hf and convert that "
          "folder with llama.cpp's convert_hf_to_gguf.py")

