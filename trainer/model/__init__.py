"""The model and sampling: loading the policy, LoRA adapters, decoding and log-probs."""
