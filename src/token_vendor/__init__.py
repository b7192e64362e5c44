"""Igni token vendor: an IAM-authorized Lambda that vends cached Igni OAuth2 tokens.

The layers, outside in:

- `functions/`: the three Lambda entry points (`api`, `maintenance`, `rotation`) and the
  runtime an execution environment builds once;
- `vending/`: the policy (service, lease, freshness, secret versions, memory tier, exchange),
  free of AWS and HTTP SDKs;
- `aws/`: DynamoDB, Secrets Manager and KMS adapters, and the clients;
- `igni/`: the OAuth2 client-credentials request and the strict reading of its answer;
- at the top: `config`, `errors`, `observability` and `models`, the data every layer shares.
"""
