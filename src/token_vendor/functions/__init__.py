"""The Lambda entry points, one module per kind of event: `api` (API Gateway REST proxy events),
`maintenance` (the pre-warm schedule and `Secret Label Updated`), `rotation` (Secrets Manager
rotation steps). Each turns its event into a call and the result into an answer; `runtime` builds
what an execution environment keeps between invocations."""
