"""Integration tests: real processes (moto server, Igni stub) over HTTP; never mock_aws."""
