"""The AWS adapters: the token table (DynamoDB), the secret store (Secrets Manager), the token
cipher (KMS) and the clients they use. Every AWS failure leaves here as a domain error."""
