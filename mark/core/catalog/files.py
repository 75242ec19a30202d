"""Where the catalog lives: the packaged directory and the name of each file in it."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEFAULT_DIRECTORY",
    "INSTANCE_TYPES_FILE",
    "SAGEMAKER_FILE",
    "LAMBDA_FILE",
    "SPOT_FILE",
    "PROFILES_FILE",
    "SPOT_ADVISOR_FILE",
]

DEFAULT_DIRECTORY = Path(__file__).resolve().parent
INSTANCE_TYPES_FILE = "instance_types.json"
SAGEMAKER_FILE = "sagemaker_prices.json"
LAMBDA_FILE = "lambda_pricing.json"
SPOT_FILE = "spot_prices.csv"
PROFILES_FILE = "profiles.json"
SPOT_ADVISOR_FILE = "spot_advisor.json"
