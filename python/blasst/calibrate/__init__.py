"""Calibration of BLASST thresholds: `blasst-calibrate --help` or `python -m blasst.calibrate --help`.

    from blasst.calibrate import calibrate_model, random_samples
    result = calibrate_model(model, samples, phases=("prefill", "decode"))
    result.fits["prefill"].a, result.fits["prefill"].b
    result.sparse_context["prefill"]  # per target: its factor and the shortest context that skips

lambda = factor / context_length >= 1 turns skipping off, so a target skips only in contexts longer
than its factor; calibration reports that range and warns when a target leaves the calibration
lengths or the model's whole context dense. Samples longer than the model's context are refused.
"""

from .collect import DEFAULT_TRIALS, SampleRecord, TrialCollector
from .data import length_bins, load_texts, random_samples, token_stream, windows
from .fit import FitResult, extrapolation_warning, fit_exponential
from .run import CalibrationResult, calibrate_model

__all__ = ["calibrate_model", "CalibrationResult", "TrialCollector", "SampleRecord", "DEFAULT_TRIALS",
           "fit_exponential", "FitResult", "extrapolation_warning", "length_bins", "load_texts", "random_samples",
           "token_stream", "windows"]
