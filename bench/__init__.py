"""`make bench`: the token vendor against two baselines, environments as processes."""
