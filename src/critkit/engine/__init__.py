"""Engine: loading models (the embedded default, hub ids, local folders, LoRA adapters) and
generating from them behind one interface: the local transformers backend with critkit's
continuous-batching decoder and per-row KV cache, in-process vLLM, any OpenAI-compatible server
over HTTP, and `critkit serve`, a loopback server for local models.

Synthesis and evaluation generate through it; training loads its models from it."""
