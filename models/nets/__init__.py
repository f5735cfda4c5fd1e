"""Networks re-implemented in torch so that their published weights load without their packages' other
dependencies; each has a parity test against a reference output."""
