"""The simulator: scripted annotators (oracles) driving the real loop."""
