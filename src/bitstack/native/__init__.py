"""Native CPU kernels (C++, compiled at first use against the installed torch).

:mod:`bitstack.native.planes` — planes weights: the lookup-table product for few tokens and the
fast rebuild of Ŵ for many, each with its pure-PyTorch reference.  :mod:`bitstack.native.build`
— the compile-and-cache loader.  Importing this package compiles and loads nothing; the first
call that wants a native op does (docs/cpu.md).
"""
