"""Checkpoint conversion: original ``.ckpt`` -> ``.safetensors``, our layout <-> diffusers' layout.

Every reader here goes through :func:`ldm.checkpoint.load_state_dict` (``weights_only`` / safetensors),
so a converted file never needed pickled code to be produced.
"""
