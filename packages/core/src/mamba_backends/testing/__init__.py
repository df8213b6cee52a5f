"""The conformance kit: checks any backend's ops against the executable spec."""
