"""The suite's hypothesis settings: the same examples on every run (CI included), so a red run
is reproducible and a green one is not luck. `python -m pytest --hypothesis-profile=default`
draws new random examples (worth doing after touching the numerics)."""

from hypothesis import settings

settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile("reproducible")
