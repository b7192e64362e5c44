"""Igni token vendor: an IAM-authorized Lambda that vends cached Igni OAuth2 tokens."""
