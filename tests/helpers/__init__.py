"""Driver scripts the training tests launch in fresh interpreters (TF device setup must come
first)."""
