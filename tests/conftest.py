"""Test-suite settings shared by every module."""

from __future__ import annotations

from hypothesis import Phase, settings

# Hypothesis' explain phase re-runs a failing example under a tracer, which over real servers and threads (moto,
# tf.data) takes minutes and has crashed the interpreter: the shrunk failing example is what we need, quickly.
settings.register_profile("npyfeed", phases=[phase for phase in Phase if phase is not Phase.explain])
settings.load_profile("npyfeed")
