"""pafukv_jax: a learned KV-cache policy (PaFu-KV) for autoregressive video diffusion, in JAX."""
