"""Tests of igni-token-vendor."""
