"""Gaussian-diffusion math, free of Lightning. Timesteps are 0-based (see :mod:`.schedule`)."""
from .gaussian import (
    PARAMETERIZATIONS,
    check_parameterization,
    interpolate_log_variance,
    log_snr,
    output_from_x0_eps,
    posterior_coefficients,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_v,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior,
    q_sample,
    q_sample_at,
    sigma_ve,
    to_x0_eps,
    training_target,
    vp_from_sigma_ve,
    x0_eps_from_output,
)
from .likelihood import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    elbo_mse_weights,
    mean_flat,
    normal_kl,
    prior_bpd,
    vlb_terms,
)
from .reverse import (
    VARIANCE_TYPES,
    fixed_large_log_variance,
    learned_range_log_variance,
    p_mean_variance,
    split_variance_output,
    threshold_x0,
)
from .schedule import (
    BETA_SCHEDULES,
    FORWARD_BUFFERS,
    SCHEDULE_BUFFERS,
    DiffusionSchedule,
    as_schedule,
    extract,
    make_beta_schedule,
    rescale_zero_terminal_snr,
)

__all__ = [
    "BETA_SCHEDULES", "FORWARD_BUFFERS", "SCHEDULE_BUFFERS", "PARAMETERIZATIONS", "VARIANCE_TYPES",
    "DiffusionSchedule", "as_schedule",
    "bits_per_dim", "check_parameterization", "discretized_gaussian_log_likelihood", "elbo_mse_weights",
    "extract", "fixed_large_log_variance", "learned_range_log_variance", "make_beta_schedule", "mean_flat",
    "normal_kl", "output_from_x0_eps", "x0_eps_from_output", "p_mean_variance", "predict_eps_from_v",
    "predict_eps_from_x0", "predict_v",
    "predict_x0_from_eps", "predict_x0_from_v", "prior_bpd", "q_posterior", "q_sample",
    "rescale_zero_terminal_snr", "split_variance_output", "threshold_x0", "to_x0_eps", "training_target",
    "vlb_terms", "interpolate_log_variance", "log_snr", "posterior_coefficients", "q_sample_at", "sigma_ve",
    "vp_from_sigma_ve",
]
