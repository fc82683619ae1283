"""Training pieces every driver uses: the step runner, the learning-rate schedule, evaluation, checkpoints,
distributed set-up and the Hugging Face Trainer callback."""
