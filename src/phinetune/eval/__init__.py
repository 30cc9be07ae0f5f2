"""Benchmarks: multiple-choice tasks scored by log-likelihood (lm-eval's way), base vs fine-tuned, and lm-eval itself."""
