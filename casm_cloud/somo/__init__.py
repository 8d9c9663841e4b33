"""SoMo.ml (O & Orth 2021, Sci. Data 8, 170): features, the published model, windowed prediction.

Public API::

    from casm_cloud import somo

    daily = somo.dynamic_features(era5_hourly)                  # lazy, UTC days
    statics = somo.static_features(static, daily, start="2000-01-01", end="2019-12-31")
    ckpt = somo.import_published("model.pt", forcing_scaler="f.csv",
                                 static_scaler="s.csv", out="ckpt/")
    sm = somo.predict(ckpt, daily, statics)                     # lazy (time, *space)
    somo.predict_to_zarr(ckpt, daily, statics, "sm.zarr", chunks={"time": 365})

torch is imported only when a model runs.
"""

from casm_cloud.somo.features import (
    DYNAMIC_FEATURES,
    LATENT_HEAT,
    PUBLISHED_DYNAMIC,
    PUBLISHED_STATIC,
    FeatureError,
    climatology,
    dynamic_features,
    static_features,
)
from casm_cloud.somo.output import predict_to_zarr
from casm_cloud.somo.predict import predict
from casm_cloud.somo.published import import_published, read_scaler
from casm_cloud.somo.windowed import WINDOW, WindowedModel, cpu_has_amx, resolve_precision

__all__ = [
    "DYNAMIC_FEATURES", "LATENT_HEAT", "PUBLISHED_DYNAMIC", "PUBLISHED_STATIC", "WINDOW",
    "FeatureError", "WindowedModel", "climatology", "cpu_has_amx", "dynamic_features",
    "import_published", "predict", "predict_to_zarr", "read_scaler", "resolve_precision",
    "static_features",
]
