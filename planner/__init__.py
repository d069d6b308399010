"""planner: an offline capacity planner for serving several LLMs with llama.cpp."""
