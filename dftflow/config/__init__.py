"""Validated configuration models: recipes and cluster profiles."""

from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.config.profile import ClusterProfile, load_profile
from dftflow.config.recipe import Recipe, load_recipe

__all__ = ["ClusterProfile", "Recipe", "StrictModel", "load_profile", "load_recipe", "load_yaml_model"]
