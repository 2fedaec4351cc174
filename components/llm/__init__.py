"""LLM stages: corpus and tokens, continual pretraining, contrastive fine-tuning, distillation, embeddings."""
