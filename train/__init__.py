"""Training: data readers, mixed sampling, Detic fine-tuning, evaluation, synthetic benchmark, CLIs."""
