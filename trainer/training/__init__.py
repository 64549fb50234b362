"""A training round: votes to examples, preference losses, the answer-health gate."""
