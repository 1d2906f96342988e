"""sftcore: what the laptop (launcher) and the container (jobs) share, and nothing else.

The recipe and its rules, the contract (env names, file layout, labels), errors and exit codes,
secret masking, cloud capabilities, the eval backend rule, the data formats and the leaderboard's
columns. It imports neither half and nothing heavy (pyproject's [tool.importlinter]), so both can
import it: the launcher without torch, the job without SkyPilot.
"""
