"""The vending policy: what may be served, when the fleet refreshes, and how one environment
wins the refresh lease. No AWS or HTTP SDK here: the table, the secret store and Igni are passed
in, so the policy runs as well against in-memory fakes and an injected clock."""
