"""The Wan2.1 VAE (diffusers' AutoencoderKLWan) in Flax NNX: config, layers, model, whole and
chunked encoding/decoding (codec), and weights from diffusers or Wan2.1's own files; a folder of
videos encoded once into latent clips (prepare), and latent videos decoded to pixels (pixels)."""
