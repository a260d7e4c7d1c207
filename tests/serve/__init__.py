"""Tests of bitstack.serve (a package, so that its modules and conftest do not clash with those of tests/)."""
