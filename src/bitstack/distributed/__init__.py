"""Several devices: a model split by layers over the ranks of a ``torch.distributed`` group, each
within its own budget (:mod:`~bitstack.distributed.pipeline`, :mod:`~bitstack.distributed.shard`),
and the decompositions of a compression spread over the ranks
(:mod:`~bitstack.distributed.compress`).  ``docs/multi-gpu.md`` describes the design."""
