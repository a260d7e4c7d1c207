"""Pure tensor math shared by the codecs: sign packing, activation scales.

Nothing here does I/O or keeps state; drivers pass every input explicitly.  Each codec's own math
lives in its folder (:mod:`bitstack.codecs`), the sorting strategies in :mod:`bitstack.sorting`.
"""
