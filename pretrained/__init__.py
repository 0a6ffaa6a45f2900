"""The shipped weights, installed with the package as data: the small VAE (vae-clouds/; vae-clouds-colours/
is it with a decoder that draws every sky colour of the text clips), Latte (latte-clouds/), text Latte
(latte-clouds-text/) and text encoder (text-clouds/) trained on procedural clouds, the training configs
that made them (*.yaml), the commands (make_pretrained*.sh) and their logs.
`latte sample` defaults to them and `latte demo` starts from them. Nothing here is code but this one path.
"""
import os

PRETRAINED = os.path.dirname(os.path.abspath(__file__))  # the folder holding them, wherever the package is
