"""The tools around the toolkit: `latte demo` (demo.py), procedural clips (synthetic.py), the demo's
text encoder and random-weight encoder folders (demo_text_encoder.py), the text demo's prompt check
(prompt_check.py), every `latte bench` (bench/), the fixture writers tests use (fixtures.py), and their
key tables (config.py).
"""
