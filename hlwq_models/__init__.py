"""hlwq_models: minimal inference models that run on hlwq_kernels (Qwen3.5 for now)."""
