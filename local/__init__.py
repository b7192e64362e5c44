"""Local stand-ins for AWS and Igni: run and test the token vendor on one machine, no Docker."""
