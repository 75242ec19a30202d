"""Catalogs as data: prices, limits and model profiles, each file stating its source and date.

The files beside this module are the only place Mark's numbers about the outside world live:

- `instance_types.json`: EC2 us-east-1 Linux on-demand prices and shapes (AWS pricing page).
- `sagemaker_prices.json`: SageMaker real-time endpoint prices, keyed by the EC2 type they run on
  (the MArk paper's baseline).
- `lambda_pricing.json`: AWS Lambda prices and limits, plus an estimated cold start.
- `spot_prices.csv`: a synthetic spot price sample (its `# source: ...; date: ...` header says how
  it was made), replayed cyclically so a simulation of any length has prices.
- `spot_advisor.json`: the Spot Instance Advisor's frequency-of-interruption band per type in
  us-east-1 (estimated), which `--interruption-rate advisor` turns into rates.
- `profiles.json`: per-model SLOs (the paper's) and per-type latency profiles T(b), anchored on
  the MArk slides and code where figures were published and marked `estimated` otherwise.

Every JSON file carries top-level `source` and `date`; a malformed entry raises `CatalogError`
naming the file and the entry. `load_catalog()` with no argument is cached.

Modules: `files` (where the catalog lives), `values` (Lambda's prices, the models), `spot_prices`
(the spot history and its replay), `catalog` (the Catalog and its lookups), `loading` (reading
and validating the files), `checks` (the validators that name the file and entry).
"""

from mark.core.catalog.catalog import Catalog
from mark.core.catalog.checks import CatalogError
from mark.core.catalog.files import (
    DEFAULT_DIRECTORY,
    INSTANCE_TYPES_FILE,
    LAMBDA_FILE,
    PROFILES_FILE,
    SAGEMAKER_FILE,
    SPOT_ADVISOR_FILE,
    SPOT_FILE,
)
from mark.core.catalog.loading import load_catalog
from mark.core.catalog.spot_prices import SpotPricePoint
from mark.core.catalog.values import LambdaPricing, ModelEntry, band_rate_per_hour

__all__ = [
    "DEFAULT_DIRECTORY",
    "INSTANCE_TYPES_FILE",
    "SAGEMAKER_FILE",
    "LAMBDA_FILE",
    "SPOT_FILE",
    "PROFILES_FILE",
    "SPOT_ADVISOR_FILE",
    "CatalogError",
    "LambdaPricing",
    "SpotPricePoint",
    "ModelEntry",
    "Catalog",
    "load_catalog",
    "band_rate_per_hour",
]
