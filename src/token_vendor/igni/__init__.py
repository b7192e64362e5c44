"""The Igni OAuth2 client: building the client-credentials request, sending it within the
deadline, and reading the answer strictly."""
