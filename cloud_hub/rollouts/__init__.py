"""Canary rollouts of models to device cohorts, gated on the devices' telemetry.

``plan`` (stages, gate thresholds), ``cohort`` (selectors, stable stage
membership), ``gates`` (statistics and the stage verdict), ``tables`` (the
persisted state machine), ``service`` (:class:`RolloutService`, ``hub.rollouts``)
and ``controller`` (the background decision loop with its database lease).
"""

from cloud_hub.rollouts.plan import Gates, Plan, Stage, build_plan, load_plan_file, plan_from_flags

__all__ = ["Gates", "Plan", "Stage", "build_plan", "load_plan_file", "plan_from_flags"]
