"""Go and CloudEvents compatibility: JSON as daprd's Go code reads and writes it, envelopes."""
