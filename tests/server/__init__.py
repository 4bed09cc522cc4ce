"""Tests of `arker serve`: raw HTTP against a real server on loopback, and its parts."""
