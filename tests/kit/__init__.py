"""Helpers shared by the test suites, imported as package modules.

* `tests.kit.server`: `Api`, a raw-HTTP client of a real `arker serve`, and the
  assertions on its error envelopes and health;
* `tests.kit.raw_http`: one request sent verbatim over `http.client` (no URL
  normalisation), for paths and headers `requests` would rewrite;
* `tests.kit.faultproxy`: a seeded fault-injecting HTTP proxy for the e2e suites (resets,
  answers cut after the server acted, per-chunk resets, byte counters);
* `tests.kit.loopback`: a real keep-alive HTTP server on loopback for the SDK tests;
* `tests.kit.sandbox`: writing files into an engine's VM the way the server does;
* `tests.kit.markdown_blocks`: the fenced blocks of the docs, for the examples test;
* `tests.kit.files`: a local file's sha256, computed independently of the SDK.
"""
