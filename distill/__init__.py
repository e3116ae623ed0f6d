"""Knowledge-distillation retraining: run config, data, losses, trainer, results on disk."""
