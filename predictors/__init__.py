"""Load forecasters behind one interface (`Forecaster`), chosen by name from a registry.

    from predictors import create_forecaster
    f = create_forecaster("holt-winters", bucket_s=60.0)
    f.observe(timestamp_s, count)          # once per bucket, in order
    f.forecast(horizon_buckets=5)          # mark.core.types.Forecast: mean, upper quantile (req/s)

Names: last, moving-max, ewma, holt-winters, arima, learned, ensemble, plus entry points of the
group "mark.forecasters". `predictors.backtest` scores them on a trace.
"""

from predictors.base import Forecaster, RateHistory
from predictors.registry import (
    BUILTIN_FORECASTERS,
    ENTRY_POINT_GROUP,
    available_forecasters,
    create_forecaster,
)

__all__ = [
    "Forecaster",
    "RateHistory",
    "BUILTIN_FORECASTERS",
    "ENTRY_POINT_GROUP",
    "available_forecasters",
    "create_forecaster",
]
