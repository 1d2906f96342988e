"""sftlaunch jobs: what runs inside the container on the GPU host (or locally on a CPU).

Heavy imports (torch, transformers, peft, lm-eval) live here. Never imports `sky`.
"""
