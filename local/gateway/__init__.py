"""API Gateway (REST API, AWS_IAM auth, Lambda proxy integration), imitated on loopback."""
