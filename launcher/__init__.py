"""sftlaunch launcher: the half that runs on the user's laptop.

Only light imports at module level (click, pydantic, yaml, rich). Anything that talks to
clouds imports `sky` inside the function that needs it, so `--help` and `validate` stay fast.
"""

__version__ = "0.1.0"
