"""Unit tests: pure logic, no servers."""
