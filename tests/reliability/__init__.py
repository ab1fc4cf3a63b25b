"""Reliability and security tests (issue #8): bad input, faults, load, security. See docs/reliability.md.

Tests here need no cluster; the cluster halves live in tests/integration/test_reliability_*.py (they share
the dev-cluster fixtures there) and use the helpers in `reliability.chaos`."""
