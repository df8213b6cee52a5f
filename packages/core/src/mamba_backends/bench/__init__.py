"""Side-by-side benchmarks of the current platform's ops against baselines."""
