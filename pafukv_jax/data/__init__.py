"""Data: procedural TFDS datasets where long memory matters, user videos, and the input pipeline.

  from pafukv_jax import data
  train = data.make_pipeline(cfg.data, 'train', mesh=mesh)   # cfg.data from configs/data.py
  for batch in train.iterate(start_step):                    # the same batches after a restart
    ...

Modules: revisit (the revisited-content mask), procedural (shared builder parts),
occluded_objects and photo_pan (the TFDS builders), folder (a folder of videos), latents (a folder
of .npz clips: VAE latents, prompt embeddings), tfds_video (a prepared TFDS dataset by name),
sources (config -> dataset), pipeline (batches on a mesh).
"""

from pafukv_jax.data.occluded_objects import OccludedObjects
from pafukv_jax.data.photo_pan import PhotoPan
from pafukv_jax.data.pipeline import Pipeline, uint8_to_float
from pafukv_jax.data.procedural import prepare, procedural_config
from pafukv_jax.data.revisit import revisit_mask
from pafukv_jax.data.sources import (first_clips, frame_cond_dim, make_pipeline, open_source,
                                     static_scene)
