"""Pydantic models of the MI: command recipes, parameter types, results, JSON Schema."""

from .mi import COMMANDS, mi_json_schema

__all__ = ["COMMANDS", "mi_json_schema"]
